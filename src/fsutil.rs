//! Filesystem mutations: no-clobber publish, atomic writes, removal, directory fsync. The only module that renames or deletes.
