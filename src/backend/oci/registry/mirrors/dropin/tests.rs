//! Unit tests of the drop-in directories, on real files in temp dirs.

use std::collections::BTreeMap;
use std::fs;

use super::*;

/// A temp dir standing for `/etc/containers` and one for `$XDG_CONFIG_HOME`.
struct Dirs {
    td: tempfile::TempDir,
}

impl Dirs {
    fn new() -> Self {
        Self {
            td: tempfile::tempdir().unwrap(),
        }
    }

    fn system(&self) -> PathBuf {
        self.td.path().join("etc/containers")
    }

    fn xdg(&self) -> PathBuf {
        self.td.path().join("xdg")
    }

    /// Write `text` at `rel` under the temp dir and return its path.
    fn write(&self, rel: &str, text: &str) -> PathBuf {
        let path = self.td.path().join(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, text).unwrap();
        path
    }

    fn sources(&self, conf: &RegistriesConf, vars: &[(&str, &Path)]) -> Sources {
        let vars: BTreeMap<String, OsString> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.as_os_str().to_owned()))
            .collect();
        Sources::of(conf, |k| vars.get(k).cloned(), &self.system())
    }

    /// Searching, with `$XDG_CONFIG_HOME` in the temp dir.
    fn load(&self) -> Result<Registries, Error> {
        let xdg = self.xdg();
        Registries::load_sources(&self.sources(&RegistriesConf::Search, &[("XDG_CONFIG_HOME", &xdg)]))
    }
}

/// The endpoints tried for `host/app:v1`, as `host/repository`.
fn tried(r: &Registries, host: &str) -> Vec<String> {
    r.endpoints(host, "app", "v1")
        .unwrap()
        .iter()
        .map(|e| format!("{}/{}", e.host, e.repository))
        .collect()
}

fn mirrored(location: &str, mirror: &str) -> String {
    format!("[[registry]]\nlocation = \"{location}\"\n[[registry.mirror]]\nlocation = \"{mirror}\"\n")
}

#[test]
fn drop_ins_are_read_in_name_order_and_replace_tables_by_prefix() {
    let d = Dirs::new();
    let main = d.write(
        "etc/containers/registries.conf",
        &format!(
            "{}[[registry]]\nlocation = \"b.example\"\nblocked = true\n\
             [[registry]]\nlocation = \"d.example\"\nblocked = true\n",
            mirrored("a.example", "m0.lan")
        ),
    );
    // Written out of order: the names decide. `prefix` a.example is the key of the table
    // that had only `location` a.example.
    d.write(
        "etc/containers/registries.conf.d/20-second.conf",
        "[[registry]]\nprefix = \"a.example\"\nlocation = \"a.example\"\n\
         [[registry.mirror]]\nlocation = \"m2.lan\"\n",
    );
    d.write(
        "etc/containers/registries.conf.d/10-first.conf",
        &format!(
            "{}[[registry]]\nlocation = \"b.example\"\n",
            mirrored("a.example", "m1.lan")
        ),
    );
    d.write(
        "etc/containers/registries.conf.d/30-new.conf",
        &mirrored("c.example", "m3.lan"),
    );
    // Then the user's directory, after the system's.
    d.write("xdg/containers/registries.conf.d/00-user.conf", &mirrored("c.example", "m4.lan"));
    // Not read: other names, a sub-directory even with a .conf name, and what is inside it.
    for skipped in [
        "etc/containers/registries.conf.d/README",
        "etc/containers/registries.conf.d/40-x.conf.bak",
        "etc/containers/registries.conf.d/50-x.conf~",
        "etc/containers/registries.conf.d/60-sub.conf/inner.conf",
    ] {
        d.write(skipped, "not [ toml");
    }

    let r = d.load().unwrap();
    assert_eq!(tried(&r, "a.example"), ["m2.lan/app", "a.example/app"]);
    // Replaced whole: the later table has no `blocked`.
    assert_eq!(tried(&r, "b.example"), ["b.example/app"]);
    assert_eq!(tried(&r, "c.example"), ["m4.lan/app", "c.example/app"]);
    // Untouched, and the message names the file the table came from.
    let err = r.endpoints("d.example", "app", "v1").unwrap_err();
    assert!(matches!(&err, Error::Blocked { path, .. } if *path == main), "{err}");
}

#[test]
fn a_blocking_drop_in_is_named_and_a_missing_directory_is_fine() {
    let d = Dirs::new();
    // No main file and no directory: no rules.
    assert_eq!(tried(&d.load().unwrap(), "a.example"), ["a.example/app"]);
    // Drop-ins apply without a main file.
    let file = d.write(
        "etc/containers/registries.conf.d/block.conf",
        "[[registry]]\nprefix = \"a.example\"\nblocked = true\n",
    );
    let err = d.load().unwrap().endpoints("a.example", "app", "v1").unwrap_err();
    assert!(matches!(&err, Error::Blocked { path, .. } if *path == file), "{err}");
}

#[test]
fn a_bad_drop_in_is_an_error_naming_it() {
    for (text, cause) in [
        ("[[registry]]\nprefix = 3\n", "invalid type"),
        ("[registries.block]\nregistries = [\"x.example\"]\n", "version 2"),
        ("[[registry]]\nlocation = \"https://x.example\"\n", "scheme"),
    ] {
        let d = Dirs::new();
        d.write("etc/containers/registries.conf", &mirrored("a.example", "m0.lan"));
        d.write("etc/containers/registries.conf.d/10-good.conf", &mirrored("b.example", "m1.lan"));
        let bad = d.write("etc/containers/registries.conf.d/20-bad.conf", text);
        let err = d.load().unwrap_err();
        let msg = err.to_string();
        assert!(
            matches!(&err, Error::BadRegistriesConf { path, .. } if *path == bad),
            "{msg}"
        );
        assert!(msg.contains(cause), "{msg}");
    }
    // A directory that cannot be listed is an error naming it.
    let d = Dirs::new();
    let not_dir = d.write("etc/containers/registries.conf.d", "a file");
    let err = d.load().unwrap_err();
    assert!(
        matches!(&err, Error::RegistriesConf { path, .. } if *path == not_dir),
        "{err}"
    );
}

#[test]
fn which_files_and_directories_apply() {
    let d = Dirs::new();
    let (system, xdg) = (d.system(), d.xdg());
    let system_dir = system.join("registries.conf.d");
    let user_dir = xdg.join("containers/registries.conf.d");
    let search = RegistriesConf::Search;
    let xdg_only = [("XDG_CONFIG_HOME", xdg.as_path())];

    // Nothing exists: no main file, both directories.
    let expected = Sources {
        main: None,
        dirs: vec![system_dir.clone(), user_dir.clone()],
    };
    assert_eq!(d.sources(&search, &xdg_only), expected);
    // The system file.
    let system_file = d.write("etc/containers/registries.conf", "");
    let expected = Sources {
        main: Some(system_file),
        ..expected
    };
    assert_eq!(d.sources(&search, &xdg_only), expected);
    // `$HOME/.config` without `$XDG_CONFIG_HOME`.
    let home = d.td.path().join("home");
    assert_eq!(
        d.sources(&search, &[("HOME", &home)]).dirs,
        [system_dir.clone(), home.join(".config/containers/registries.conf.d")]
    );
    // The user's file: only the user's directory.
    let user_file = d.write("xdg/containers/registries.conf", "");
    assert_eq!(
        d.sources(&search, &xdg_only),
        Sources {
            main: Some(user_file),
            dirs: vec![user_dir.clone()],
        }
    );
    // $CONTAINERS_REGISTRIES_CONF: that file, then both directories (as containers/image).
    let env_file = d.td.path().join("env.conf");
    assert_eq!(
        d.sources(&search, &[("XDG_CONFIG_HOME", &xdg), ("CONTAINERS_REGISTRIES_CONF", &env_file)]),
        Sources {
            main: Some(env_file),
            dirs: vec![system_dir, user_dir],
        }
    );
    // An explicit file: that file alone.
    let flag = d.td.path().join("flag.conf");
    assert_eq!(
        d.sources(&RegistriesConf::File(flag.clone()), &xdg_only),
        Sources {
            main: Some(flag),
            dirs: Vec::new(),
        }
    );
    assert_eq!(d.sources(&RegistriesConf::None, &xdg_only), Sources::default());
}

/// Byte order of the names, not the order the directory lists them in, nor numeric order.
#[test]
fn drop_ins_are_listed_in_byte_order_of_their_names() {
    let d = Dirs::new();
    let names = [
        "b.conf", "10-x.conf", "Z.conf", "9-x.conf", "a.conf", "01-x.conf", "_.conf", "ab.conf",
        "aa.conf", ".conf",
    ];
    for name in names {
        d.write(&format!("etc/containers/registries.conf.d/{name}"), &mirrored("a.example", name));
    }
    let dir = d.system().join("registries.conf.d");
    let listed: Vec<String> = conf_files(&dir)
        .unwrap()
        .iter()
        .map(|p| p.file_name().unwrap().to_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        listed,
        [
            ".conf", "01-x.conf", "10-x.conf", "9-x.conf", "Z.conf", "_.conf", "a.conf",
            "aa.conf", "ab.conf", "b.conf",
        ]
    );
    // The last one wins.
    assert_eq!(tried(&d.load().unwrap(), "a.example"), ["b.conf/app", "a.example/app"]);
}

/// A wildcard and a host prefix of the same length both match: the first table wins in one
/// file; once a drop-in is merged, the tables are in prefix order and the wildcard (`*` sorts
/// before letters) comes first, as with containers/image.
#[test]
fn after_a_drop_in_the_tables_are_in_prefix_order() {
    let d = Dirs::new();
    d.write(
        "etc/containers/registries.conf",
        "[[registry]]\nprefix = \"x.b.com\"\n[[registry.mirror]]\nlocation = \"exact.lan\"\n\
         [[registry]]\nprefix = \"*.b.com\"\n[[registry.mirror]]\nlocation = \"wild.lan\"\n",
    );
    assert_eq!(tried(&d.load().unwrap(), "x.b.com"), ["exact.lan/app", "x.b.com/app"]);
    d.write("etc/containers/registries.conf.d/empty.conf", "# nothing\n");
    assert_eq!(tried(&d.load().unwrap(), "x.b.com"), ["wild.lan/app", "x.b.com/app"]);
}
