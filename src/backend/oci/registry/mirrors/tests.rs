//! Unit tests of the registries.conf rules.

use super::*;

fn parse(text: &str) -> Registries {
    Registries::parse(text, Path::new("test.conf")).unwrap()
}

fn tried(r: &Registries, host: &str, repo: &str, reference: &str) -> Vec<String> {
    r.endpoints(host, repo, reference)
        .unwrap()
        .iter()
        .map(|e| {
            let sep = if e.reference.contains(':') { '@' } else { ':' };
            let http = if e.insecure { " (http)" } else { "" };
            format!("{}/{}{sep}{}{http}", e.host, e.repository, e.reference)
        })
        .collect()
}

const DIGEST: &str =
    "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

#[test]
fn the_man_page_example() {
    let r = parse(
        r#"
unqualified-search-registries = ["example.com"]

[[registry]]
prefix = "example.com/foo"
insecure = false
blocked = false
location = "internal-registry-for-example.com/bar"

[[registry.mirror]]
location = "example-mirror-0.local/mirror-for-foo"

[[registry.mirror]]
location = "example-mirror-1.local/mirrors/foo"
insecure = true

[[registry]]
location = "registry.com"

[[registry.mirror]]
location = "mirror.registry.com"
"#,
    );
    assert_eq!(
        tried(&r, "example.com", "foo/image", "latest"),
        [
            "example-mirror-0.local/mirror-for-foo/image:latest",
            "example-mirror-1.local/mirrors/foo/image:latest (http)",
            "internal-registry-for-example.com/bar/image:latest",
        ]
    );
    assert_eq!(
        tried(&r, "registry.com", "image", "latest"),
        ["mirror.registry.com/image:latest", "registry.com/image:latest"]
    );
    // No table: the name as it is.
    assert_eq!(tried(&r, "quay.io", "a/b", "v1"), ["quay.io/a/b:v1"]);
    // `example.com/foobar` is not under the prefix `example.com/foo`.
    assert_eq!(tried(&r, "example.com", "foobar", "v1"), ["example.com/foobar:v1"]);
}

#[test]
fn longest_prefix_wins_and_ports_are_separate_hosts() {
    let r = parse(
        r#"
[[registry]]
prefix = "reg.lan"
location = "a.lan"
[[registry]]
prefix = "reg.lan/team"
location = "b.lan/t"
[[registry]]
prefix = "reg.lan/team/app:v1"
location = "c.lan/x:v2"
"#,
    );
    assert_eq!(tried(&r, "reg.lan", "x", "v1"), ["a.lan/x:v1"]);
    assert_eq!(tried(&r, "reg.lan", "team/y", "v1"), ["b.lan/t/y:v1"]);
    assert_eq!(tried(&r, "reg.lan", "team/app", "v1"), ["c.lan/x:v2"]);
    assert_eq!(tried(&r, "reg.lan", "team/app", "v3"), ["b.lan/t/app:v3"]);
    assert_eq!(tried(&r, "reg.lan:5000", "x", "v1"), ["reg.lan:5000/x:v1"]);
    assert_eq!(
        tried(&r, "reg.lan", "x", DIGEST),
        [format!("a.lan/x@{DIGEST}")]
    );
}

#[test]
fn pull_from_mirror_and_digest_only() {
    let r = parse(
        r#"
[[registry]]
location = "up.lan"
[[registry.mirror]]
location = "all.lan"
[[registry.mirror]]
location = "digest.lan"
pull-from-mirror = "digest-only"
[[registry.mirror]]
location = "tag.lan"
pull-from-mirror = "tag-only"

[[registry]]
location = "strict.lan"
mirror-by-digest-only = true
[[registry.mirror]]
location = "m.lan"
"#,
    );
    assert_eq!(
        tried(&r, "up.lan", "a", "v1"),
        ["all.lan/a:v1", "tag.lan/a:v1", "up.lan/a:v1"]
    );
    assert_eq!(
        tried(&r, "up.lan", "a", DIGEST),
        [
            format!("all.lan/a@{DIGEST}"),
            format!("digest.lan/a@{DIGEST}"),
            format!("up.lan/a@{DIGEST}")
        ]
    );
    assert_eq!(tried(&r, "strict.lan", "a", "v1"), ["strict.lan/a:v1"]);
    assert_eq!(
        tried(&r, "strict.lan", "a", DIGEST),
        [format!("m.lan/a@{DIGEST}"), format!("strict.lan/a@{DIGEST}")]
    );
}

#[test]
fn wildcards_blocking_and_insecure() {
    let r = parse(
        r#"
[[registry]]
prefix = "*.example.com"
insecure = true
[[registry.mirror]]
location = "cache.lan/ex"

[[registry]]
prefix = "bad.example.com"
blocked = true
"#,
    );
    assert_eq!(
        tried(&r, "a.b.example.com:5000", "x/y", "v1"),
        ["cache.lan/ex/x/y:v1", "a.b.example.com:5000/x/y:v1 (http)"]
    );
    assert_eq!(tried(&r, "example.com", "x", "v1"), ["example.com/x:v1"]);
    let err = r.endpoints("bad.example.com", "x", "v1").unwrap_err();
    assert!(matches!(err, Error::Blocked { .. }), "{err:?}");
    assert!(err.to_string().contains("bad.example.com/x:v1"), "{err}");
    // The longer exact prefix wins over the wildcard.
    assert!(r.endpoints("bad.example.com", "x", DIGEST).is_err());
}

#[test]
fn version_one_lists() {
    let r = parse(
        r#"
[registries.search]
registries = ["docker.io"]
[registries.insecure]
registries = ["plain.lan:5000"]
[registries.block]
registries = ["evil.lan"]
"#,
    );
    assert_eq!(
        tried(&r, "plain.lan:5000", "a", "v1"),
        ["plain.lan:5000/a:v1 (http)"]
    );
    assert!(matches!(
        r.endpoints("evil.lan", "a", "v1"),
        Err(Error::Blocked { .. })
    ));
}

#[test]
fn bad_files_are_errors_naming_the_cause() {
    for (text, needle) in [
        ("[[registry]]\ninsecure = true\n", "neither prefix nor location"),
        (
            "[[registry]]\nlocation = \"a\"\n[[registry]]\nprefix = \"a\"\n",
            "more than once",
        ),
        (
            "[[registry]]\nlocation = \"a\"\n[[registry.mirror]]\nlocation = \"m\"\n\
             pull-from-mirror = \"some\"\n",
            "not all, digest-only or tag-only",
        ),
        (
            "[[registry]]\nlocation = \"a\"\nmirror-by-digest-only = true\n\
             [[registry.mirror]]\nlocation = \"m\"\npull-from-mirror = \"tag-only\"\n",
            "mirror-by-digest-only",
        ),
        ("[[registry]]\nlocation = \"https://a\"\n", "URL scheme"),
        ("[[registry]]\nprefix = \"*.a.com/x\"\n", "wildcard"),
        ("[[registry]]\nprefix = \"*.a.com\"\nlocation = \"b\"\n", "wildcard"),
        ("[[registry]\n", "TOML"),
        ("[[registry]]\nlocation = \"a\"\n[registries.block]\nregistries = []\n", "mixes"),
    ] {
        let err = Registries::parse(text, Path::new("/x/registries.conf")).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("/x/registries.conf"), "{msg}");
        assert!(
            msg.contains(needle) || needle == "TOML",
            "{text:?}: {msg}"
        );
    }
}

#[test]
fn an_empty_or_comment_only_file_has_no_rules() {
    let r = parse(
        "# nothing\nunqualified-search-registries = []\n[aliases]\n\
         \"x\" = \"docker.io/library/x\"\n",
    );
    assert_eq!(tried(&r, "docker.io", "library/x", "v1"), ["docker.io/library/x:v1"]);
}

#[test]
fn unknown_keys_are_ignored() {
    let r = parse(
        "future-global = true\n[[registry]]\nlocation = \"a.lan\"\nfuture-key = 1\n\
         [[registry.mirror]]\nlocation = \"m.lan\"\nother = \"x\"\n",
    );
    assert_eq!(tried(&r, "a.lan", "x", "v1"), ["m.lan/x:v1", "a.lan/x:v1"]);
}
