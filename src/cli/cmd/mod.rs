//! One file per command: each calls into the store once and prints the result.

pub(crate) mod config;
pub(crate) mod gc;
pub(crate) mod import;
pub(crate) mod inspect;
pub(crate) mod list;
pub(crate) mod pull;
pub(crate) mod push;
pub(crate) mod reference;
pub(crate) mod rm;
pub(crate) mod verify;
