//! Which files one configuration is read from, and the drop-in directories of
//! containers-registries.conf.d(5): which directories apply, which of their files are read and
//! in what order, and how a later file's tables replace earlier ones.
//!
//! - Searching (no explicit file): with `$CONTAINERS_REGISTRIES_CONF` set, that file, then
//!   `/etc/containers/registries.conf.d`, then the user's `containers/registries.conf.d`; else
//!   the user's `containers/registries.conf` when it exists, then only the user's drop-ins; else
//!   `/etc/containers/registries.conf` when it exists (no main file is fine), then the system's
//!   and the user's drop-ins. The user's directory is under `$XDG_CONFIG_HOME` (`~/.config`
//!   without it), as the user's file is.
//! - An explicit file (`--registries-conf`, [`RegistriesConf::File`]) is read alone.
//! - In a directory, the files whose names end with `.conf` are read in byte order of their
//!   names; other files and sub-directories are skipped; a missing directory has none. Each
//!   must be version 2, and is an error naming it when it does not parse.
//! - A later file's `[[registry]]` table replaces, whole, the earlier table with the same prefix
//!   (the location when it has no prefix); tables with new prefixes are added; then the tables
//!   are in byte order of their prefixes.
#![allow(
    clippy::result_large_err,
    reason = "shares the registry Error, whose DigestMismatch is large; see registry.rs"
)]

use std::ffi::OsString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::{Error, Registries, RegistriesConf};

/// The system-wide configuration directory.
pub(super) const SYSTEM_DIR: &str = "/etc/containers";

/// The files one configuration is read from.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Sources {
    /// The main file, read first; it must be readable.
    pub(super) main: Option<PathBuf>,
    /// The drop-in directories, in order; each may be missing.
    pub(super) dirs: Vec<PathBuf>,
}

impl Sources {
    /// The files of `conf`, with the environment `env` and the system directory `system`
    /// (`/etc/containers` outside tests).
    pub(super) fn of(
        conf: &RegistriesConf,
        env: impl Fn(&str) -> Option<OsString>,
        system: &Path,
    ) -> Self {
        match conf {
            RegistriesConf::None => Self::default(),
            RegistriesConf::File(p) => Self {
                main: Some(p.clone()),
                dirs: Vec::new(),
            },
            RegistriesConf::Search => {
                let env = |k: &str| env(k).filter(|v| !v.is_empty());
                let user = crate::layout::user_config_dir(env).map(|d| d.join("containers"));
                let user_dir = user.as_ref().map(|u| u.join("registries.conf.d"));
                let both = |main| Self {
                    main,
                    dirs: [system.join("registries.conf.d")]
                        .into_iter()
                        .chain(user_dir.clone())
                        .collect(),
                };
                if let Some(p) = env("CONTAINERS_REGISTRIES_CONF") {
                    return both(Some(PathBuf::from(p)));
                }
                let user_file = user.map(|u| u.join("registries.conf"));
                if let Some(file) = user_file.filter(|f| f.exists()) {
                    return Self {
                        main: Some(file),
                        dirs: user_dir.into_iter().collect(),
                    };
                }
                let file = system.join("registries.conf");
                both(file.exists().then_some(file))
            }
        }
    }
}

impl Registries {
    /// Read the main file of `sources`, then merge each drop-in into it in order.
    pub(super) fn load_sources(sources: &Sources) -> Result<Self, Error> {
        let read = |path: &Path| {
            std::fs::read_to_string(path).map_err(|source| Error::RegistriesConf {
                path: path.to_owned(),
                source,
            })
        };
        let mut out = match &sources.main {
            Some(path) => Self::parse(&read(path)?, path)?,
            None => Self::default(),
        };
        for dir in &sources.dirs {
            for file in conf_files(dir)? {
                let text = match read(&file) {
                    // Removed since the listing: as if it had not been listed.
                    Err(Error::RegistriesConf { source, .. })
                        if source.kind() == io::ErrorKind::NotFound =>
                    {
                        continue
                    }
                    other => other?,
                };
                out.merge(Self::parse_file(&text, &file, true)?);
            }
        }
        Ok(out)
    }

    /// A later file's tables replace those with the same prefix; new ones are added. Then, as
    /// containers/image does after each drop-in, the tables are in byte order of their prefixes
    /// as written (which decides the first of equally long matches).
    fn merge(&mut self, later: Self) {
        for rule in later.rules {
            match self.rules.iter_mut().find(|r| r.prefix == rule.prefix) {
                Some(old) => *old = rule,
                None => self.rules.push(rule),
            }
        }
        self.rules.sort_by_cached_key(|r| r.prefix.to_string());
    }
}

/// The files directly in `dir` whose names end with `.conf`, sorted by name; none when `dir`
/// does not exist.
pub(super) fn conf_files(dir: &Path) -> Result<Vec<PathBuf>, Error> {
    let unreadable = |source| Error::RegistriesConf {
        path: dir.to_owned(),
        source,
    };
    let entries = match std::fs::read_dir(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        other => other.map_err(unreadable)?,
    };
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(unreadable)?;
        if !entry.file_name().as_bytes().ends_with(b".conf") {
            continue;
        }
        let path = entry.path();
        // A sub-directory is skipped, also behind a symbolic link.
        if std::fs::metadata(&path).is_ok_and(|m| m.is_dir()) {
            continue;
        }
        files.push(path);
    }
    files.sort();
    Ok(files)
}

#[cfg(test)]
mod tests;
