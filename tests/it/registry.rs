//! The registry client against a real `docker-registry` on 127.0.0.1, images pushed by skopeo.

use std::cell::Cell;

use imgstore::backend::oci::registry::{
    Client, ClientOptions, Credentials, Error, Platform, DOCKER_LIST, DOCKER_MANIFEST,
};
use imgstore::Digest;

use crate::oci_image::{host_and_other_arch, ImageBuilder, LayerBuilder, OciLayout};
use crate::registry_server::TestRegistry;

fn options() -> ClientOptions {
    ClientOptions {
        // Never pick up the developer's own ~/.docker/config.json.
        docker_config: Some("/nonexistent/imgstore-test/config.json".into()),
        retries: 1,
        ..ClientOptions::default()
    }
}

fn client() -> Client {
    Client::new(options())
}

fn platform(arch: &str) -> Platform {
    match arch {
        "arm64" => Platform::new("linux", "arm64", Some("v8")),
        other => Platform::new("linux", other, None),
    }
}

#[test]
fn resolves_single_arch_image_to_the_digest_skopeo_reports() {
    let (host_arch, _) = host_and_other_arch();
    let registry = TestRegistry::start();
    let dir = tempfile::tempdir().unwrap();
    let mut layout = OciLayout::create(dir.path());
    let built = layout.add_image("v1", &ImageBuilder::sample(host_arch));
    registry.push_oci_layout(dir.path(), "team/app", "v1");

    let resolved = client()
        .resolve(&registry.host(), "team/app", "v1")
        .unwrap();
    assert_eq!(
        resolved.manifest_digest,
        registry.skopeo_digest("team/app", "v1")
    );
    assert_eq!(resolved.manifest_digest, built.manifest_digest);
    assert_eq!(resolved.raw, built.manifest);
    assert_eq!(resolved.config, built.config);
    assert_eq!(resolved.index_digest, None);
    assert_eq!(resolved.manifest.config.digest, built.config_digest);
    let layers: Vec<Digest> = resolved.manifest.layers.iter().map(|l| l.digest).collect();
    let expected: Vec<Digest> = built.layers.iter().map(|l| l.digest).collect();
    assert_eq!(layers, expected);
}

#[test]
fn fetches_every_layer_verified_with_progress() {
    let (host_arch, _) = host_and_other_arch();
    let registry = TestRegistry::start();
    let dir = tempfile::tempdir().unwrap();
    let mut layout = OciLayout::create(dir.path());
    let built = layout.add_image("v1", &ImageBuilder::sample(host_arch));
    registry.push_oci_layout(dir.path(), "app", "v1");

    let client = client();
    let resolved = client.resolve(&registry.host(), "app", "v1").unwrap();
    for (desc, layer) in resolved.manifest.layers.iter().zip(&built.layers) {
        let mut last = 0;
        let bytes = client
            .fetch_blob(
                &registry.host(),
                "app",
                desc,
                || Ok(Vec::new()),
                |n| last = n,
            )
            .unwrap();
        assert_eq!(Digest::sha256_of(&bytes), desc.digest);
        assert_eq!(bytes, layer.gz);
        assert_eq!(last, desc.size);
    }
}

#[test]
fn resolves_a_multi_arch_index_to_the_clients_platform() {
    let (host_arch, other_arch) = host_and_other_arch();
    let registry = TestRegistry::start();
    let dir = tempfile::tempdir().unwrap();
    let mut layout = OciLayout::create(dir.path());
    let index = layout.add_index(
        "multi",
        &[
            ImageBuilder::sample("amd64"),
            ImageBuilder::sample("arm64").variant("v8"),
        ],
    );
    registry.push_oci_layout(dir.path(), "multi", "multi");
    let digest_of = |arch: &str| {
        index
            .images
            .iter()
            .find(|i| i.platform["architecture"] == arch)
            .unwrap()
            .manifest_digest
    };

    let resolved = client()
        .resolve(&registry.host(), "multi", "multi")
        .unwrap();
    assert_eq!(resolved.manifest_digest, digest_of(host_arch));
    assert_eq!(resolved.index_digest, Some(index.index_digest));
    assert_eq!(registry.skopeo_digest("multi", "multi"), index.index_digest);

    let other = Client::new(ClientOptions {
        platform: platform(other_arch),
        ..options()
    });
    let resolved = other.resolve(&registry.host(), "multi", "multi").unwrap();
    assert_eq!(resolved.manifest_digest, digest_of(other_arch));
    let config: serde_json::Value = serde_json::from_slice(&resolved.config).unwrap();
    assert_eq!(config["architecture"], other_arch);
}

#[test]
fn an_index_without_the_platform_lists_what_it_has() {
    let (_, other_arch) = host_and_other_arch();
    let registry = TestRegistry::start();
    let dir = tempfile::tempdir().unwrap();
    let mut layout = OciLayout::create(dir.path());
    layout.add_index("only-other", &[ImageBuilder::sample(other_arch)]);
    registry.push_oci_layout(dir.path(), "multi", "only-other");

    let err = client()
        .resolve(&registry.host(), "multi", "only-other")
        .unwrap_err();
    let Error::NoMatchingPlatform { available, .. } = &err else {
        panic!("expected NoMatchingPlatform, got {err:?}");
    };
    assert_eq!(available, &[format!("linux/{other_arch}")]);
    assert!(err.to_string().contains(other_arch), "{err}");
}

#[test]
fn a_single_manifest_for_another_arch_is_an_error() {
    let (host_arch, other_arch) = host_and_other_arch();
    let registry = TestRegistry::start();
    let dir = tempfile::tempdir().unwrap();
    let mut layout = OciLayout::create(dir.path());
    layout.add_image("foreign", &ImageBuilder::sample(other_arch));
    registry.push_oci_layout(dir.path(), "app", "foreign");

    let err = client()
        .resolve(&registry.host(), "app", "foreign")
        .unwrap_err();
    let Error::WrongPlatform { found, wanted, .. } = &err else {
        panic!("expected WrongPlatform, got {err:?}");
    };
    assert_eq!(found, &format!("linux/{other_arch}"));
    assert_eq!(wanted.architecture, host_arch);
}

#[test]
fn missing_tag_and_repository_are_not_found() {
    let (host_arch, _) = host_and_other_arch();
    let registry = TestRegistry::start();
    let dir = tempfile::tempdir().unwrap();
    let mut layout = OciLayout::create(dir.path());
    layout.add_image("v1", &ImageBuilder::sample(host_arch));
    registry.push_oci_layout(dir.path(), "app", "v1");

    let client = client();
    match client.resolve(&registry.host(), "app", "v2") {
        Err(Error::NotFound {
            reference,
            repository,
            ..
        }) => {
            assert_eq!(reference, "v2");
            assert_eq!(repository, "app");
        }
        other => panic!("expected NotFound, got {other:?}"),
    }
    let err = client.resolve(&registry.host(), "nope", "v1").unwrap_err();
    assert!(matches!(err, Error::NotFound { .. }), "{err:?}");
    let missing = format!("sha256:{}", "0".repeat(64));
    let err = client
        .resolve(&registry.host(), "app", &missing)
        .unwrap_err();
    assert!(matches!(err, Error::NotFound { .. }), "{err:?}");
}

/// A tag moved to a new image must not change what a digest-pinned reference resolves to.
#[test]
fn a_pinned_digest_resolves_to_exactly_that_manifest() {
    let (host_arch, _) = host_and_other_arch();
    let registry = TestRegistry::start();
    let dir = tempfile::tempdir().unwrap();
    let mut layout = OciLayout::create(dir.path());
    let first = layout.add_image("latest", &ImageBuilder::sample(host_arch));
    registry.push_oci_layout(dir.path(), "app", "latest");

    let dir2 = tempfile::tempdir().unwrap();
    let mut layout2 = OciLayout::create(dir2.path());
    let second = layout2.add_image(
        "latest",
        &ImageBuilder::new(host_arch).layer(LayerBuilder::new().file("new", "second image\n")),
    );
    registry.push_oci_layout(dir2.path(), "app", "latest");
    assert_ne!(first.manifest_digest, second.manifest_digest);

    let client = client();
    let by_tag = client.resolve(&registry.host(), "app", "latest").unwrap();
    assert_eq!(by_tag.manifest_digest, second.manifest_digest);
    let pinned = first.manifest_digest.to_string();
    let by_digest = client.resolve(&registry.host(), "app", &pinned).unwrap();
    assert_eq!(by_digest.manifest_digest, first.manifest_digest);
    assert_eq!(by_digest.raw, first.manifest);
}

#[test]
fn a_corrupted_blob_on_the_registry_is_a_digest_mismatch() {
    let (host_arch, _) = host_and_other_arch();
    let registry = TestRegistry::start();
    let dir = tempfile::tempdir().unwrap();
    let mut layout = OciLayout::create(dir.path());
    let built = layout.add_image("v1", &ImageBuilder::sample(host_arch));
    registry.push_oci_layout(dir.path(), "app", "v1");

    let client = client();
    let resolved = client.resolve(&registry.host(), "app", "v1").unwrap();
    let layer = &resolved.manifest.layers[1];
    let data = registry.blob_data_path(&layer.digest);
    let mut bytes = std::fs::read(&data).unwrap();
    assert_eq!(bytes, built.layers[1].gz);
    // Same length, so only the digest can notice.
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&data, &bytes).unwrap();

    match client.fetch_blob(&registry.host(), "app", layer, || Ok(Vec::new()), |_| {}) {
        Err(Error::DigestMismatch {
            expected,
            actual,
            what,
        }) => {
            assert_eq!(expected, layer.digest);
            assert_eq!(actual, Digest::sha256_of(&bytes));
            assert!(what.contains(&layer.digest.to_string()), "{what}");
        }
        other => panic!("expected DigestMismatch, got {other:?}"),
    }

    // A truncated blob is caught by its size, whatever Content-Length the registry sends.
    let truncated = &built.layers[0];
    let data = registry.blob_data_path(&truncated.digest);
    std::fs::write(&data, &truncated.gz[..truncated.gz.len() / 2]).unwrap();
    let err = client
        .fetch_blob(
            &registry.host(),
            "app",
            &resolved.manifest.layers[0],
            || Ok(Vec::new()),
            |_| {},
        )
        .unwrap_err();
    assert!(matches!(err, Error::SizeMismatch { .. }), "{err:?}");

    // A corrupt config fails the resolve itself.
    let config = registry.blob_data_path(&resolved.manifest.config.digest);
    let mut bytes = std::fs::read(&config).unwrap();
    bytes[0] = b' ';
    std::fs::write(&config, &bytes).unwrap();
    let err = client.resolve(&registry.host(), "app", "v1").unwrap_err();
    assert!(matches!(err, Error::DigestMismatch { .. }), "{err:?}");
}

#[test]
fn basic_auth_registry_accepts_right_and_rejects_wrong_credentials() {
    let (host_arch, _) = host_and_other_arch();
    let registry = TestRegistry::start_with_auth("alice", "s3cret pass");
    let dir = tempfile::tempdir().unwrap();
    let mut layout = OciLayout::create(dir.path());
    let built = layout.add_image("v1", &ImageBuilder::sample(host_arch));
    registry.push_oci_layout(dir.path(), "private/app", "v1");

    let right = Client::new(ClientOptions {
        credentials: Some(Credentials::new("alice", "s3cret pass")),
        ..options()
    });
    let resolved = right
        .resolve(&registry.host(), "private/app", "v1")
        .unwrap();
    assert_eq!(resolved.manifest_digest, built.manifest_digest);
    let layer = right
        .fetch_blob(
            &registry.host(),
            "private/app",
            &resolved.manifest.layers[0],
            || Ok(Vec::new()),
            |_| {},
        )
        .unwrap();
    assert_eq!(layer, built.layers[0].gz);

    let wrong = Client::new(ClientOptions {
        credentials: Some(Credentials::new("alice", "wrong")),
        ..options()
    });
    let err = wrong
        .resolve(&registry.host(), "private/app", "v1")
        .unwrap_err();
    let Error::Unauthorized { host, .. } = &err else {
        panic!("expected Unauthorized, got {err:?}");
    };
    assert_eq!(host, &registry.host());
    assert!(err.to_string().contains("alice"), "{err}");
    assert!(!err.to_string().contains("wrong"), "password leaked: {err}");

    let anonymous = client()
        .resolve(&registry.host(), "private/app", "v1")
        .unwrap_err();
    assert!(
        matches!(anonymous, Error::Unauthorized { .. }),
        "{anonymous:?}"
    );
}

#[test]
fn credentials_come_from_the_docker_config_file() {
    let (host_arch, _) = host_and_other_arch();
    let registry = TestRegistry::start_with_auth("bob", "hunter2");
    let dir = tempfile::tempdir().unwrap();
    let mut layout = OciLayout::create(dir.path());
    let built = layout.add_image("v1", &ImageBuilder::sample(host_arch));
    registry.push_oci_layout(dir.path(), "app", "v1");

    let config = dir.path().join("docker-config.json");
    // base64("bob:hunter2"), written by hand so the test does not use the code under test.
    std::fs::write(
        &config,
        format!(
            r#"{{"auths":{{"{}":{{"auth":"Ym9iOmh1bnRlcjI="}}}}}}"#,
            registry.host()
        ),
    )
    .unwrap();
    let client = Client::new(ClientOptions {
        docker_config: Some(config),
        ..options()
    });
    let resolved = client.resolve(&registry.host(), "app", "v1").unwrap();
    assert_eq!(resolved.manifest_digest, built.manifest_digest);
}

fn big_image(arch: &str) -> ImageBuilder {
    // Larger than what loopback socket buffers can hold in flight (a few MiB each side), so the
    // registry cannot have written it all before the first chunk reaches the client. Stored
    // (gzip level 0) because building it is the slow part of these tests in debug builds.
    ImageBuilder::new(arch).layer(
        LayerBuilder::new()
            .gzip_level(0)
            .random_file("big", 16 << 20, 7),
    )
}

#[test]
fn a_registry_killed_mid_pull_is_an_error_not_a_hang() {
    let (host_arch, _) = host_and_other_arch();
    let mut registry = TestRegistry::start();
    let dir = tempfile::tempdir().unwrap();
    let mut layout = OciLayout::create(dir.path());
    layout.add_image("big", &big_image(host_arch));
    registry.push_oci_layout(dir.path(), "big", "big");

    let client = client();
    let host = registry.host();
    let resolved = client.resolve(&host, "big", "big").unwrap();
    let layer = &resolved.manifest.layers[0];
    let err = client
        .fetch_blob(
            &host,
            "big",
            layer,
            || Ok(Vec::new()),
            |n| {
                if n > 0 {
                    registry.stop();
                }
            },
        )
        .unwrap_err();
    assert!(err.is_transient(), "{err:?}");
    assert!(
        matches!(err, Error::Transport { .. } | Error::Read { .. }),
        "{err:?}"
    );

    // And with the registry gone, a resolve fails after its retries instead of waiting.
    let err = client.resolve(&host, "big", "big").unwrap_err();
    assert!(matches!(err, Error::Transport { .. }), "{err:?}");
}

/// A download broken by a registry restart starts over in a fresh sink and succeeds.
#[test]
fn a_broken_download_is_retried_from_scratch_into_a_fresh_sink() {
    let (host_arch, _) = host_and_other_arch();
    let mut registry = TestRegistry::start();
    let dir = tempfile::tempdir().unwrap();
    let mut layout = OciLayout::create(dir.path());
    let built = layout.add_image("big", &big_image(host_arch));
    registry.push_oci_layout(dir.path(), "big", "big");

    let client = Client::new(ClientOptions {
        retries: 3,
        ..options()
    });
    let host = registry.host();
    let resolved = client.resolve(&host, "big", "big").unwrap();
    let layer = &resolved.manifest.layers[0];
    let opened = Cell::new(0);
    let mut restarted = false;
    let bytes = client
        .fetch_blob(
            &host,
            "big",
            layer,
            || {
                opened.set(opened.get() + 1);
                Ok(Vec::new())
            },
            |n| {
                if n > 0 && !restarted {
                    restarted = true;
                    registry.restart();
                }
            },
        )
        .unwrap();
    assert!(restarted);
    assert!(opened.get() >= 2, "sink opened {} times", opened.get());
    assert_eq!(bytes.len() as u64, layer.size);
    assert_eq!(bytes, built.layers[0].gz);
}

#[test]
fn docker_schema2_manifests_and_lists_resolve_too() {
    let (host_arch, _) = host_and_other_arch();
    let registry = TestRegistry::start();
    let dir = tempfile::tempdir().unwrap();
    let mut layout = OciLayout::create(dir.path());
    layout.add_image("single", &ImageBuilder::sample(host_arch));
    layout.add_index(
        "multi",
        &[
            ImageBuilder::sample("amd64"),
            ImageBuilder::sample("arm64").variant("v8"),
        ],
    );
    registry.push_oci_layout_as_docker(dir.path(), "docker", "single");
    registry.push_oci_layout_as_docker(dir.path(), "docker", "multi");

    let client = client();
    for tag in ["single", "multi"] {
        let resolved = client.resolve(&registry.host(), "docker", tag).unwrap();
        assert_eq!(resolved.manifest.media_type, DOCKER_MANIFEST, "{tag}");
        assert_eq!(resolved.manifest_digest, Digest::sha256_of(&resolved.raw));
        let config: serde_json::Value = serde_json::from_slice(&resolved.config).unwrap();
        assert_eq!(config["architecture"], host_arch);
        let top = resolved.index_digest.unwrap_or(resolved.manifest_digest);
        assert_eq!(top, registry.skopeo_digest("docker", tag), "{tag}");
    }
    let list: serde_json::Value =
        serde_json::from_slice(&registry.skopeo_raw("docker", "multi")).unwrap();
    assert_eq!(list["mediaType"], DOCKER_LIST);
    let multi = client.resolve(&registry.host(), "docker", "multi").unwrap();
    assert!(multi.index_digest.is_some());
}

#[test]
fn the_client_can_be_shared_between_threads() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Client>();
    send_sync::<Error>();
    send_sync::<imgstore::backend::oci::registry::Resolved>();
}

#[test]
fn token_auth_registry_gets_a_bearer_token_once_per_repository() {
    let (host_arch, _) = host_and_other_arch();
    let registry = TestRegistry::start_with_token_auth("carol", "t0ken-pass");
    let dir = tempfile::tempdir().unwrap();
    let mut layout = OciLayout::create(dir.path());
    let built = layout.add_image("v1", &ImageBuilder::sample(host_arch));
    registry.push_oci_layout(dir.path(), "org/app", "v1");

    let client = Client::new(ClientOptions {
        credentials: Some(Credentials::new("carol", "t0ken-pass")),
        ..options()
    });
    let before = registry.tokens_issued();
    let resolved = client.resolve(&registry.host(), "org/app", "v1").unwrap();
    assert_eq!(resolved.manifest_digest, built.manifest_digest);
    let after_resolve = registry.tokens_issued();
    assert_eq!(
        after_resolve,
        before + 1,
        "one token for manifest and config"
    );
    for (desc, layer) in resolved.manifest.layers.iter().zip(&built.layers) {
        let bytes = client
            .fetch_blob(&registry.host(), "org/app", desc, || Ok(Vec::new()), |_| {})
            .unwrap();
        assert_eq!(bytes, layer.gz);
    }
    assert_eq!(
        registry.tokens_issued(),
        after_resolve,
        "the token is reused"
    );

    let wrong = Client::new(ClientOptions {
        credentials: Some(Credentials::new("carol", "nope")),
        ..options()
    });
    let err = wrong
        .resolve(&registry.host(), "org/app", "v1")
        .unwrap_err();
    assert!(matches!(err, Error::Unauthorized { .. }), "{err:?}");
    assert!(err.to_string().contains("carol"), "{err}");

    let err = Client::new(options())
        .resolve(&registry.host(), "org/app", "v1")
        .unwrap_err();
    assert!(matches!(err, Error::Unauthorized { .. }), "{err:?}");
    assert!(err.to_string().contains("anonymous"), "{err}");
}

/// A manifest damaged in the registry's storage is caught by tag (Docker-Content-Digest) and by
/// digest, before its contents are trusted.
#[test]
fn a_corrupted_manifest_is_a_digest_mismatch_by_tag_and_by_digest() {
    let (host_arch, _) = host_and_other_arch();
    let registry = TestRegistry::start();
    let dir = tempfile::tempdir().unwrap();
    let mut layout = OciLayout::create(dir.path());
    let built = layout.add_image("v1", &ImageBuilder::sample(host_arch));
    registry.push_oci_layout(dir.path(), "app", "v1");

    let data = registry.blob_data_path(&built.manifest_digest);
    let text = String::from_utf8(std::fs::read(&data).unwrap()).unwrap();
    // Same length and still valid JSON, so only the digest can tell.
    let damaged = text.replacen("config.v1+json", "config.v1+jsoN", 1);
    assert_ne!(damaged, text);
    std::fs::write(&data, &damaged).unwrap();

    let client = client();
    for reference in ["v1".to_owned(), built.manifest_digest.to_string()] {
        match client.resolve(&registry.host(), "app", &reference) {
            Err(Error::DigestMismatch {
                expected, actual, ..
            }) => {
                assert_eq!(expected, built.manifest_digest, "{reference}");
                assert_eq!(actual, Digest::sha256_of(damaged.as_bytes()), "{reference}");
            }
            other => panic!("{reference}: expected DigestMismatch, got {other:?}"),
        }
    }
}
