//! The reference grammar (DESIGN.md §7), case by case from the grammar, plus property tests.

use imgstore::digest::{self, Digest};
use imgstore::reference::{Error, Reference};
use proptest::prelude::*;

/// sha256 of the empty string.
const H: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// The error kinds a case can expect; digest errors name the inner `digest::Error` variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum K {
    Empty,
    Format,
    Upper,
    Path,
    TooLong,
    Hex,
    Domain,
    EmptyTag,
    Tag,
    TagLong,
    DEmpty,
    DEmptyAlgo,
    DEmptyEncoded,
    DMissing,
    DUnsupported,
    DLength,
    DUpper,
    DNotHex,
}

fn kind(e: &Error) -> Option<K> {
    Some(match e {
        Error::Empty => K::Empty,
        Error::InvalidFormat => K::Format,
        Error::Uppercase => K::Upper,
        Error::InvalidPath => K::Path,
        Error::NameTooLong { .. } => K::TooLong,
        Error::HexName => K::Hex,
        Error::InvalidDomain => K::Domain,
        Error::EmptyTag => K::EmptyTag,
        Error::InvalidTag => K::Tag,
        Error::TagTooLong { .. } => K::TagLong,
        Error::Digest(d) => match d {
            digest::Error::Empty => K::DEmpty,
            digest::Error::EmptyAlgorithm(_) => K::DEmptyAlgo,
            digest::Error::EmptyEncoded(_) => K::DEmptyEncoded,
            digest::Error::MissingAlgorithm(_) => K::DMissing,
            digest::Error::UnsupportedAlgorithm { .. } => K::DUnsupported,
            digest::Error::BadLength { .. } => K::DLength,
            digest::Error::Uppercase(_) => K::DUpper,
            digest::Error::NotHex { .. } => K::DNotHex,
            _ => return None,
        },
        _ => return None,
    })
}

/// What a valid case must parse to. The expected normalized form and digest are derived from
/// `canonical` (drop a `:latest` the input did not have; the digest is what follows `@`).
struct Parts {
    domain: &'static str,
    path: String,
    tag: Option<String>,
    canonical: String,
    familiar: String,
}

struct Case {
    input: String,
    want: Result<Parts, K>,
}

fn ok(
    input: impl Into<String>,
    domain: &'static str,
    path: impl Into<String>,
    tag: Option<&str>,
    canonical: impl Into<String>,
    familiar: impl Into<String>,
) -> Case {
    Case {
        input: input.into(),
        want: Ok(Parts {
            domain,
            path: path.into(),
            tag: tag.map(str::to_owned),
            canonical: canonical.into(),
            familiar: familiar.into(),
        }),
    }
}

/// A valid docker.io official image: `input` must normalize to `docker.io/library/<name>`.
fn official(input: impl Into<String>, name: &str, tag: Option<&str>, rest: &str) -> Case {
    let canonical = match (tag, rest) {
        (None, "") => format!("docker.io/library/{name}:latest"),
        (Some(t), r) => format!("docker.io/library/{name}:{t}{r}"),
        (None, r) => format!("docker.io/library/{name}{r}"),
    };
    let familiar = match tag {
        Some(t) => format!("{name}:{t}{rest}"),
        None => format!("{name}{rest}"),
    };
    ok(
        input,
        "docker.io",
        format!("library/{name}"),
        tag,
        canonical,
        familiar,
    )
}

fn err(input: impl Into<String>, k: K) -> Case {
    Case {
        input: input.into(),
        want: Err(k),
    }
}

fn d() -> String {
    format!("sha256:{H}")
}

#[allow(clippy::too_many_lines)] // one table, read top to bottom
fn cases() -> Vec<Case> {
    let dg = d();
    let at = format!("@{dg}");
    let a = |n: usize| "a".repeat(n);
    let t = |n: usize| "t".repeat(n);
    let h512 = "ab".repeat(64);
    let b3 = Digest::blake3_of(b"x").to_string();
    vec![
        // --- normalization of docker.io names
        official("ubuntu", "ubuntu", None, ""),
        official("ubuntu:22.04", "ubuntu", Some("22.04"), ""),
        official("library/ubuntu", "ubuntu", None, ""),
        official("docker.io/library/ubuntu", "ubuntu", None, ""),
        official("docker.io/ubuntu", "ubuntu", None, ""),
        official("index.docker.io/ubuntu", "ubuntu", None, ""),
        official(
            "index.docker.io/library/ubuntu:latest",
            "ubuntu",
            Some("latest"),
            "",
        ),
        official("ubuntu:latest", "ubuntu", Some("latest"), ""),
        official("0", "0", None, ""),
        official("a", "a", None, ""),
        official("busybox:1.36.1-musl", "busybox", Some("1.36.1-musl"), ""),
        ok(
            "foo/bar",
            "docker.io",
            "foo/bar",
            None,
            "docker.io/foo/bar:latest",
            "foo/bar",
        ),
        ok(
            "docker.io/foo/bar",
            "docker.io",
            "foo/bar",
            None,
            "docker.io/foo/bar:latest",
            "foo/bar",
        ),
        ok(
            "index.docker.io/foo/bar:1",
            "docker.io",
            "foo/bar",
            Some("1"),
            "docker.io/foo/bar:1",
            "foo/bar:1",
        ),
        ok(
            "docker.io/library/foo/bar",
            "docker.io",
            "library/foo/bar",
            None,
            "docker.io/library/foo/bar:latest",
            "library/foo/bar",
        ),
        ok(
            "library/foo/bar",
            "docker.io",
            "library/foo/bar",
            None,
            "docker.io/library/foo/bar:latest",
            "library/foo/bar",
        ),
        ok(
            "a/b/c/d/e",
            "docker.io",
            "a/b/c/d/e",
            None,
            "docker.io/a/b/c/d/e:latest",
            "a/b/c/d/e",
        ),
        ok(
            "0/1",
            "docker.io",
            "0/1",
            None,
            "docker.io/0/1:latest",
            "0/1",
        ),
        ok(
            "a1b2/c3d4:x",
            "docker.io",
            "a1b2/c3d4",
            Some("x"),
            "docker.io/a1b2/c3d4:x",
            "a1b2/c3d4:x",
        ),
        // Only the exact default names are rewritten; look-alikes are other registries.
        ok(
            "docker.io:5000/foo",
            "docker.io:5000",
            "foo",
            None,
            "docker.io:5000/foo:latest",
            "docker.io:5000/foo",
        ),
        ok(
            "index.docker.io:443/foo",
            "index.docker.io:443",
            "foo",
            None,
            "index.docker.io:443/foo:latest",
            "index.docker.io:443/foo",
        ),
        ok(
            "sub.docker.io/foo",
            "sub.docker.io",
            "foo",
            None,
            "sub.docker.io/foo:latest",
            "sub.docker.io/foo",
        ),
        ok(
            "DOCKER.IO/foo",
            "DOCKER.IO",
            "foo",
            None,
            "DOCKER.IO/foo:latest",
            "DOCKER.IO/foo",
        ),
        // Familiar form keeps what dropping would change.
        ok(
            "docker.io/foo.bar/baz",
            "docker.io",
            "foo.bar/baz",
            None,
            "docker.io/foo.bar/baz:latest",
            "docker.io/foo.bar/baz",
        ),
        ok(
            "docker.io/localhost/x",
            "docker.io",
            "localhost/x",
            None,
            "docker.io/localhost/x:latest",
            "docker.io/localhost/x",
        ),
        official("docker.io/library/foo.bar", "foo.bar", None, ""),
        official("docker.io/localhost", "localhost", None, ""),
        // --- other registries
        ok(
            "ghcr.io/owner/repo:v1",
            "ghcr.io",
            "owner/repo",
            Some("v1"),
            "ghcr.io/owner/repo:v1",
            "ghcr.io/owner/repo:v1",
        ),
        ok(
            "ghcr.io/repo",
            "ghcr.io",
            "repo",
            None,
            "ghcr.io/repo:latest",
            "ghcr.io/repo",
        ),
        ok(
            "quay.io/coreos/etcd:v3.5.0",
            "quay.io",
            "coreos/etcd",
            Some("v3.5.0"),
            "quay.io/coreos/etcd:v3.5.0",
            "quay.io/coreos/etcd:v3.5.0",
        ),
        ok(
            "registry.example.com:5000/team/app:1.0",
            "registry.example.com:5000",
            "team/app",
            Some("1.0"),
            "registry.example.com:5000/team/app:1.0",
            "registry.example.com:5000/team/app:1.0",
        ),
        ok(
            "my-registry.local/app",
            "my-registry.local",
            "app",
            None,
            "my-registry.local/app:latest",
            "my-registry.local/app",
        ),
        ok(
            "a.b.c.d.e/app",
            "a.b.c.d.e",
            "app",
            None,
            "a.b.c.d.e/app:latest",
            "a.b.c.d.e/app",
        ),
        ok(
            "a-b-c.io:1/x",
            "a-b-c.io:1",
            "x",
            None,
            "a-b-c.io:1/x:latest",
            "a-b-c.io:1/x",
        ),
        ok(
            "a--b.io/x",
            "a--b.io",
            "x",
            None,
            "a--b.io/x:latest",
            "a--b.io/x",
        ),
        ok(
            "foo.bar/baz",
            "foo.bar",
            "baz",
            None,
            "foo.bar/baz:latest",
            "foo.bar/baz",
        ),
        ok(
            "foo:5000/bar",
            "foo:5000",
            "bar",
            None,
            "foo:5000/bar:latest",
            "foo:5000/bar",
        ),
        ok(
            "a.com:65536/x",
            "a.com:65536",
            "x",
            None,
            "a.com:65536/x:latest",
            "a.com:65536/x",
        ),
        ok(
            "1.2.3.4.5/x",
            "1.2.3.4.5",
            "x",
            None,
            "1.2.3.4.5/x:latest",
            "1.2.3.4.5/x",
        ),
        ok(format!("{}.com/x", a(300)), "", "x", None, "", ""),
        // --- localhost
        ok(
            "localhost/foo",
            "localhost",
            "foo",
            None,
            "localhost/foo:latest",
            "localhost/foo",
        ),
        ok(
            "localhost/foo/bar",
            "localhost",
            "foo/bar",
            None,
            "localhost/foo/bar:latest",
            "localhost/foo/bar",
        ),
        ok(
            "localhost:5000/foo/bar:tag",
            "localhost:5000",
            "foo/bar",
            Some("tag"),
            "localhost:5000/foo/bar:tag",
            "localhost:5000/foo/bar:tag",
        ),
        ok(
            "localhost:5000/foo",
            "localhost:5000",
            "foo",
            None,
            "localhost:5000/foo:latest",
            "localhost:5000/foo",
        ),
        // Without a path after it, `localhost:5000` is the official image `localhost`, tag 5000.
        official("localhost:5000", "localhost", Some("5000"), ""),
        official("localhost", "localhost", None, ""),
        official("localhost:latest", "localhost", Some("latest"), ""),
        ok(
            "LOCALHOST/foo",
            "LOCALHOST",
            "foo",
            None,
            "LOCALHOST/foo:latest",
            "LOCALHOST/foo",
        ),
        ok(
            "localhostx/foo",
            "docker.io",
            "localhostx/foo",
            None,
            "docker.io/localhostx/foo:latest",
            "localhostx/foo",
        ),
        // --- IPv4 and IPv6
        ok(
            "127.0.0.1/foo",
            "127.0.0.1",
            "foo",
            None,
            "127.0.0.1/foo:latest",
            "127.0.0.1/foo",
        ),
        ok(
            "127.0.0.1:5000/foo:bar",
            "127.0.0.1:5000",
            "foo",
            Some("bar"),
            "127.0.0.1:5000/foo:bar",
            "127.0.0.1:5000/foo:bar",
        ),
        ok(
            "123.45.67.89:5000/app",
            "123.45.67.89:5000",
            "app",
            None,
            "123.45.67.89:5000/app:latest",
            "123.45.67.89:5000/app",
        ),
        ok(
            "[::1]/foo",
            "[::1]",
            "foo",
            None,
            "[::1]/foo:latest",
            "[::1]/foo",
        ),
        ok(
            "[::1]:5000/foo",
            "[::1]:5000",
            "foo",
            None,
            "[::1]:5000/foo:latest",
            "[::1]:5000/foo",
        ),
        ok(
            format!("[::1]:5000/foo/bar:tag{at}"),
            "[::1]:5000",
            "foo/bar",
            Some("tag"),
            format!("[::1]:5000/foo/bar:tag{at}"),
            format!("[::1]:5000/foo/bar:tag{at}"),
        ),
        ok(
            "[2001:db8::1]:443/x",
            "[2001:db8::1]:443",
            "x",
            None,
            "[2001:db8::1]:443/x:latest",
            "[2001:db8::1]:443/x",
        ),
        ok(
            "[fe80::1ff:fe23:4567:890a]/img",
            "[fe80::1ff:fe23:4567:890a]",
            "img",
            None,
            "[fe80::1ff:fe23:4567:890a]/img:latest",
            "[fe80::1ff:fe23:4567:890a]/img",
        ),
        ok(
            "[FE80::1]/img",
            "[FE80::1]",
            "img",
            None,
            "[FE80::1]/img:latest",
            "[FE80::1]/img",
        ),
        ok(
            "[1:2:3:4:5:6:7:8]/img",
            "[1:2:3:4:5:6:7:8]",
            "img",
            None,
            "[1:2:3:4:5:6:7:8]/img:latest",
            "[1:2:3:4:5:6:7:8]/img",
        ),
        ok(
            "[::]:1/x",
            "[::]:1",
            "x",
            None,
            "[::]:1/x:latest",
            "[::]:1/x",
        ),
        // --- uppercase first component means domain
        ok("Foo/bar", "Foo", "bar", None, "Foo/bar:latest", "Foo/bar"),
        ok(
            "MyRegistry/app",
            "MyRegistry",
            "app",
            None,
            "MyRegistry/app:latest",
            "MyRegistry/app",
        ),
        ok(
            "REGISTRY.EXAMPLE.COM/app",
            "REGISTRY.EXAMPLE.COM",
            "app",
            None,
            "REGISTRY.EXAMPLE.COM/app:latest",
            "REGISTRY.EXAMPLE.COM/app",
        ),
        ok(
            "fooB/bar:T",
            "fooB",
            "bar",
            Some("T"),
            "fooB/bar:T",
            "fooB/bar:T",
        ),
        // --- separators
        official("foo_bar", "foo_bar", None, ""),
        official("foo__bar", "foo__bar", None, ""),
        official("foo.bar", "foo.bar", None, ""),
        official("foo-bar", "foo-bar", None, ""),
        official("foo---bar", "foo---bar", None, ""),
        official("a.b_c__d-e--f", "a.b_c__d-e--f", None, ""),
        official("a_b_c", "a_b_c", None, ""),
        official("a__b__c", "a__b__c", None, ""),
        official("a.b.c", "a.b.c", None, ""),
        ok(
            "foo/bar.baz",
            "docker.io",
            "foo/bar.baz",
            None,
            "docker.io/foo/bar.baz:latest",
            "foo/bar.baz",
        ),
        ok(
            "foo_bar/baz-qux",
            "docker.io",
            "foo_bar/baz-qux",
            None,
            "docker.io/foo_bar/baz-qux:latest",
            "foo_bar/baz-qux",
        ),
        ok(
            format!("x.y:1/a-b_c.d__e---f/g:T{at}"),
            "x.y:1",
            "a-b_c.d__e---f/g",
            Some("T"),
            format!("x.y:1/a-b_c.d__e---f/g:T{at}"),
            format!("x.y:1/a-b_c.d__e---f/g:T{at}"),
        ),
        // --- tags
        official("foo:_", "foo", Some("_"), ""),
        official("foo:A", "foo", Some("A"), ""),
        official("foo:Latest", "foo", Some("Latest"), ""),
        official("foo:1.0-rc.1", "foo", Some("1.0-rc.1"), ""),
        official("foo:__", "foo", Some("__"), ""),
        official("foo:a.b.c", "foo", Some("a.b.c"), ""),
        official("foo:0", "foo", Some("0"), ""),
        official("foo:v1_2-3.4", "foo", Some("v1_2-3.4"), ""),
        official("foo:_a-", "foo", Some("_a-"), ""),
        official("foo:x--..", "foo", Some("x--.."), ""),
        official("foo:ALLCAPS", "foo", Some("ALLCAPS"), ""),
        official(format!("foo:{}", t(128)), "foo", Some(&t(128)), ""),
        official(
            format!("foo:_{}", t(127)),
            "foo",
            Some(&format!("_{}", t(127))),
            "",
        ),
        // --- digests
        official(format!("ubuntu{at}"), "ubuntu", None, &at),
        official(format!("ubuntu:22.04{at}"), "ubuntu", Some("22.04"), &at),
        ok(
            format!("ghcr.io/a/b{at}"),
            "ghcr.io",
            "a/b",
            None,
            format!("ghcr.io/a/b{at}"),
            format!("ghcr.io/a/b{at}"),
        ),
        official(
            format!("ubuntu@sha512:{h512}"),
            "ubuntu",
            None,
            &format!("@sha512:{h512}"),
        ),
        official(format!("ubuntu@{b3}"), "ubuntu", None, &format!("@{b3}")),
        official(format!("localhost{at}"), "localhost", None, &at),
        official(format!("a:b{at}"), "a", Some("b"), &at),
        // --- 64-hex names
        ok(
            format!("docker.io/{H}"),
            "docker.io",
            format!("library/{H}"),
            None,
            format!("docker.io/library/{H}:latest"),
            format!("library/{H}"),
        ),
        ok(
            format!("library/{H}"),
            "docker.io",
            format!("library/{H}"),
            None,
            format!("docker.io/library/{H}:latest"),
            format!("library/{H}"),
        ),
        ok(
            format!("localhost/{H}"),
            "localhost",
            H,
            None,
            format!("localhost/{H}:latest"),
            format!("localhost/{H}"),
        ),
        ok(
            format!("example.com/{H}/x"),
            "example.com",
            format!("{H}/x"),
            None,
            format!("example.com/{H}/x:latest"),
            format!("example.com/{H}/x"),
        ),
        ok(
            format!("foo/{H}"),
            "docker.io",
            format!("foo/{H}"),
            None,
            format!("docker.io/foo/{H}:latest"),
            format!("foo/{H}"),
        ),
        ok(
            format!("{H}:tag"),
            "docker.io",
            format!("library/{H}"),
            Some("tag"),
            format!("docker.io/library/{H}:tag"),
            format!("library/{H}:tag"),
        ),
        ok(
            format!("{H}{at}"),
            "docker.io",
            format!("library/{H}"),
            None,
            format!("docker.io/library/{H}{at}"),
            format!("library/{H}{at}"),
        ),
        official(&H[..63], &H[..63], None, ""),
        official(format!("{H}0"), &format!("{H}0"), None, ""),
        // --- length limits: path after normalization, domain excluded
        official(a(247), &a(247), None, ""),
        official(format!("docker.io/library/{}", a(247)), &a(247), None, ""),
        ok(
            format!("example.com/{}", a(255)),
            "example.com",
            a(255),
            None,
            format!("example.com/{}:latest", a(255)),
            format!("example.com/{}", a(255)),
        ),
        ok(
            format!("example.com/{}", a(250)),
            "example.com",
            a(250),
            None,
            format!("example.com/{}:latest", a(250)),
            format!("example.com/{}", a(250)),
        ),
        ok(
            format!("a/{}", "b".repeat(253)),
            "docker.io",
            format!("a/{}", "b".repeat(253)),
            None,
            format!("docker.io/a/{}:latest", "b".repeat(253)),
            format!("a/{}", "b".repeat(253)),
        ),
        ok(
            format!("localhost:5000/{}:{}", a(255), t(128)),
            "localhost:5000",
            a(255),
            Some(&t(128)),
            format!("localhost:5000/{}:{}", a(255), t(128)),
            format!("localhost:5000/{}:{}", a(255), t(128)),
        ),
        err(a(248), K::TooLong),
        err(a(250), K::TooLong),
        err(a(256), K::TooLong),
        err(format!("docker.io/{}", a(248)), K::TooLong),
        err(format!("example.com/{}", a(256)), K::TooLong),
        err(format!("a/{}", "b".repeat(254)), K::TooLong),
        err(format!("{}:tag", a(250)), K::TooLong),
        err(format!("example.com/{}/{}", a(200), a(56)), K::TooLong),
        // --- empty and truncated
        err("", K::Empty),
        err(":", K::EmptyTag),
        err("@", K::DEmpty),
        err(":tag", K::Format),
        err(format!("@{dg}"), K::Format),
        err(format!(":tag@{dg}"), K::Format),
        err("foo:", K::EmptyTag),
        err("foo@", K::DEmpty),
        err(format!("foo:@{dg}"), K::EmptyTag),
        err("foo:tag@", K::DEmpty),
        err("ghcr.io/foo:", K::EmptyTag),
        // --- path structure
        err("foo//bar", K::Path),
        err("/foo", K::Path),
        err("foo/", K::Path),
        err("foo/bar/", K::Path),
        err("example.com/", K::Path),
        err("example.com//foo", K::Path),
        err("example.com/foo//bar", K::Path),
        err("_foo", K::Path),
        err("-foo", K::Path),
        err(".foo", K::Path),
        err("foo_", K::Path),
        err("foo-", K::Path),
        err("foo.", K::Path),
        err("foo___bar", K::Path),
        err("foo.-bar", K::Path),
        err("foo-.bar", K::Path),
        err("foo_.bar", K::Path),
        err("foo..bar", K::Path),
        err("foo._bar", K::Path),
        err("foo-_bar", K::Path),
        err("foo_-bar", K::Path),
        err("foo/_bar", K::Path),
        err("foo/bar_", K::Path),
        err("foo/-bar", K::Path),
        err("foo/.bar", K::Path),
        err("foo-/bar", K::Path),
        // --- uppercase in the path
        err("Foo", K::Upper),
        err("UBUNTU", K::Upper),
        err("fooBar", K::Upper),
        err("foo/Bar", K::Upper),
        err("Foo/Bar", K::Upper),
        err("example.com/Foo", K::Upper),
        err("foo/barB:tag", K::Upper),
        err(H.to_uppercase(), K::Upper),
        // --- characters outside the grammar
        err("foo bar", K::Format),
        err("foo!bar", K::Format),
        err("foo/b%r", K::Format),
        err("foo+bar", K::Format),
        err("ünicode", K::Format),
        err("foo/bär", K::Format),
        err("fooé:tag", K::Format),
        err("foo:bar:baz", K::Format),
        err("[]/foo", K::Format),
        err("[::1]:5000", K::Format),
        err("a/b:c/d", K::Format),
        err("foo\0", K::Format),
        // --- bad tags
        err("foo:.bar", K::Tag),
        err("foo:-bar", K::Tag),
        err("foo:bar!", K::Tag),
        err("foo:a+b", K::Tag),
        err("foo:é", K::Tag),
        err("ubuntu:tag with space", K::Tag),
        err("[::1]", K::Tag),
        err(format!("foo:{}", t(129)), K::TagLong),
        err(format!("foo:_{}", t(128)), K::TagLong),
        err(format!("foo:{}{at}", t(200)), K::TagLong),
        // --- bad domains
        err("-foo.com/bar", K::Domain),
        err("foo-.com/bar", K::Domain),
        err("foo..com/bar", K::Domain),
        err(".foo.com/bar", K::Domain),
        err("foo.com./bar", K::Domain),
        err("foo.com:/bar", K::Domain),
        err("foo.com:abc/bar", K::Domain),
        err("foo.com:5000:1/bar", K::Domain),
        err("foo.com:-1/bar", K::Domain),
        err("localhost:/foo", K::Domain),
        err("fo_o.com/bar", K::Domain),
        err("é.com/foo", K::Domain),
        err("foo.com /bar", K::Domain),
        err("foo:ta/g", K::Domain),
        err("[::1/foo", K::Domain),
        err("[::1]x/foo", K::Domain),
        err("[::g]/foo", K::Domain),
        err("[1.2.3.4]/foo", K::Domain),
        err("[::ffff:1.2.3.4]/foo", K::Domain),
        err("[:::]/foo", K::Domain),
        err("[::1]:/foo", K::Domain),
        err("[::1]:abc/foo", K::Domain),
        err("[fe80::1%eth0]/foo", K::Domain),
        err("[[::1]]/foo", K::Domain),
        // --- 64-hex names without a domain
        err(H, K::Hex),
        // --- malformed digests
        err("foo@sha256:abc", K::DLength),
        err(format!("foo@sha256:{}", H.to_uppercase()), K::DUpper),
        err("foo@md5:d41d8cd98f00b204e9800998ecf8427e", K::DUnsupported),
        err(format!("foo@SHA256:{H}"), K::DUnsupported),
        err("foo@sha256:", K::DEmptyEncoded),
        err("foo@:abc", K::DEmptyAlgo),
        err(format!("foo@{H}"), K::DMissing),
        err(format!("foo@sha256:{}g", &H[..63]), K::DNotHex),
        err(format!("foo@sha256:{H}00"), K::DLength),
        err(format!("foo@sha512:{H}"), K::DLength),
        err(format!("foo@{dg}@x"), K::DLength),
        err(format!("foo@@{dg}"), K::DUnsupported),
        err(format!("foo:tag@sha256:{}é", &H[..62]), K::DNotHex),
    ]
}

fn check_ok(input: &str, want: &Parts) {
    let r = Reference::parse(input).unwrap_or_else(|e| panic!("{input:?}: {e}"));
    if want.canonical.is_empty() {
        // Only the domain is too long to spell out: check it came through unchanged.
        let (domain, _) = input.split_once('/').unwrap();
        assert_eq!(r.domain(), domain, "{input:?}");
        assert_eq!(r.path(), want.path, "{input:?}");
        return;
    }
    assert_eq!(r.domain(), want.domain, "domain of {input:?}");
    assert_eq!(r.path(), want.path, "path of {input:?}");
    assert_eq!(r.tag(), want.tag.as_deref(), "tag of {input:?}");
    assert_eq!(r.canonical(), want.canonical, "canonical of {input:?}");
    assert_eq!(r.familiar(), want.familiar, "familiar of {input:?}");
    let digest = want.canonical.split_once('@').map(|(_, d)| d);
    assert_eq!(
        r.digest().map(|d| d.to_string()).as_deref(),
        digest,
        "digest of {input:?}"
    );
    let normalized = if want.tag.is_none() && digest.is_none() {
        want.canonical.strip_suffix(":latest").unwrap()
    } else {
        &want.canonical
    };
    assert_eq!(r.normalized(), normalized, "normalized of {input:?}");
    assert_eq!(r.to_string(), normalized);
    assert_eq!(r.name(), format!("{}/{}", want.domain, want.path));
    assert_eq!(input.parse::<Reference>().as_ref(), Ok(&r));
    imgstore::reference::fuzz_check(input);
}

#[test]
fn grammar_table() {
    let cases = cases();
    assert!(cases.len() >= 150, "only {} cases", cases.len());
    let mut failures = Vec::new();
    for case in &cases {
        let input = case.input.as_str();
        match (&case.want, Reference::parse(input)) {
            (Ok(want), Ok(_)) => check_ok(input, want),
            (Ok(_), Err(e)) => failures.push(format!("{input:?}: expected ok, got {e:?}")),
            (Err(k), Ok(r)) => failures.push(format!("{input:?}: expected {k:?}, got {r:?}")),
            (Err(k), Err(e)) => {
                if kind(&e) != Some(*k) {
                    failures.push(format!("{input:?}: expected {k:?}, got {e:?}"));
                }
                let msg = e.to_string();
                if !matches!(e, Error::Digest(_)) && input.len() >= 4 {
                    assert!(!msg.contains(input), "message repeats input: {msg}");
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn error_messages_say_what_is_wrong() {
    let msg = |s: &str| Reference::parse(s).unwrap_err().to_string();
    assert_eq!(msg(""), "empty reference");
    assert_eq!(msg("Foo"), "repository name must be lowercase");
    assert_eq!(
        msg("foo@md5:d41d8cd98f00b204e9800998ecf8427e"),
        "unsupported digest algorithm md5"
    );
    assert!(msg(&format!("foo:{}", "t".repeat(129))).starts_with("tag longer than 128 characters"));
    assert!(msg(&"a".repeat(256)).starts_with("repository name longer than 255 characters"));
    assert_eq!(msg("foo bar"), "invalid reference format");
    assert!(msg(H).contains("cannot specify 64-byte hexadecimal strings"));
}

#[test]
fn equal_references_hash_equal() {
    use std::collections::HashSet;
    let set: HashSet<Reference> = [
        "ubuntu",
        "docker.io/library/ubuntu",
        "index.docker.io/ubuntu",
    ]
    .iter()
    .map(|s| Reference::parse(s).unwrap())
    .collect();
    assert_eq!(set.len(), 1);
    let tagged = Reference::parse("ubuntu:latest").unwrap();
    assert_ne!(&tagged, set.iter().next().unwrap(), "explicit tag is kept");
}

/// A domain the parser will detect as one, and the domain it normalizes to.
fn domain() -> impl Strategy<Value = (String, String)> {
    let name = "[a-zA-Z0-9]([a-zA-Z0-9-]{0,4}[a-zA-Z0-9])?(\\.[a-zA-Z0-9]([a-zA-Z0-9-]{0,4}[a-zA-Z0-9])?){0,3}";
    let ipv4 = "[0-9]{1,3}\\.[0-9]{1,3}\\.[0-9]{1,3}\\.[0-9]{1,3}";
    let host = prop_oneof![
        name.prop_map(|s| s),
        ipv4.prop_map(|s| s),
        Just("localhost".to_owned()),
        Just("index.docker.io".to_owned()),
        Just("docker.io".to_owned()),
        any::<[u16; 8]>().prop_map(|a| format!("[{}]", std::net::Ipv6Addr::from(a))),
    ];
    (host, proptest::option::of(0u32..100_000))
        .prop_map(|(h, port)| match port {
            Some(p) => format!("{h}:{p}"),
            None => h,
        })
        .prop_filter("first component must read as a domain", |d| {
            d == "localhost" || d.contains(['.', ':']) || d.chars().any(|c| c.is_ascii_uppercase())
        })
        .prop_map(|d| {
            let n = if d == "index.docker.io" {
                "docker.io".to_owned()
            } else {
                d.clone()
            };
            (d, n)
        })
}

fn component() -> impl Strategy<Value = String> {
    "[a-z0-9]{1,6}(([._]|__|-{1,3})[a-z0-9]{1,6}){0,3}"
}

/// A valid reference: (input, expected domain, expected path, tag, digest).
fn valid() -> impl Strategy<Value = (String, String, String, Option<String>, Option<Digest>)> {
    (
        proptest::option::of(domain()),
        proptest::collection::vec(component(), 1..4),
        proptest::option::of("[A-Za-z0-9_][A-Za-z0-9_.-]{0,40}"),
        proptest::option::of(any::<[u8; 32]>().prop_map(Digest::sha256)),
    )
        .prop_map(|(dom, comps, tag, digest)| {
            let path = comps.join("/");
            let mut input = String::new();
            if let Some((d, _)) = &dom {
                input.push_str(d);
                input.push('/');
            }
            input.push_str(&path);
            if let Some(t) = &tag {
                input.push(':');
                input.push_str(t);
            }
            if let Some(d) = &digest {
                input.push('@');
                input.push_str(&d.to_string());
            }
            let domain = dom.map_or_else(|| "docker.io".to_owned(), |(_, n)| n);
            let path = if domain == "docker.io" && comps.len() == 1 {
                format!("library/{path}")
            } else {
                path
            };
            (input, domain, path, tag, digest)
        })
        .prop_filter("bare 64-hex names are rejected", |(input, ..)| {
            !digest::is_hex64(input)
        })
        // Without a domain, a first component with a dot is read as one: that is the grammar.
        .prop_filter(
            "first path component must not read as a domain",
            |(_, domain, path, ..)| {
                domain != "docker.io" || !path.split_once('/').is_some_and(|(f, _)| f.contains('.'))
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn valid_references_round_trip((input, domain, path, tag, digest) in valid()) {
        let r = Reference::parse(&input).map_err(|e| TestCaseError::fail(format!("{input:?}: {e}")))?;
        prop_assert_eq!(r.domain(), domain.as_str());
        prop_assert_eq!(r.path(), path.as_str());
        prop_assert_eq!(r.tag(), tag.as_deref());
        prop_assert_eq!(r.digest(), digest);
        prop_assert_eq!(Reference::parse(&format!("{r}")), Ok(r.clone()));
        let canonical = r.canonical();
        prop_assert_eq!(Reference::parse(&canonical).unwrap().canonical(), canonical.clone());
        prop_assert_eq!(Reference::parse(&r.familiar()), Ok(r.clone()));
        if tag.is_none() && digest.is_none() {
            prop_assert!(canonical.ends_with(":latest"));
        } else {
            prop_assert_eq!(canonical, r.normalized());
        }
    }

    #[test]
    fn arbitrary_strings_never_panic(s in any::<String>()) {
        imgstore::reference::fuzz_check(&s);
    }

    #[test]
    fn reference_alphabet_never_panics(s in "[a-zA-Z0-9:/@._\\-\\[\\]é]{0,48}") {
        imgstore::reference::fuzz_check(&s);
    }
}
