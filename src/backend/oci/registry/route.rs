//! Routing: which endpoints (mirrors, then the registry) a resolve or blob fetch tries, and
//! falling through them. Content is trusted only by digest, so a mirror answering wrong bytes
//! (a digest or size mismatch), nothing, or an error just moves the request on to the next
//! endpoint; the sink of a failed attempt is dropped, so nothing it wrote is kept.
#![allow(
    clippy::result_large_err,
    reason = "shares the registry Error, whose DigestMismatch is large; see registry.rs"
)]

use std::sync::Arc;

use super::mirrors::{Endpoint, Registries};
use super::transport::Repo;
use super::{Client, EndpointFailure, Error};

impl Client {
    /// The rules of the client's containers-registries.conf, read at the first call.
    fn registries(&self) -> Result<Arc<Registries>, Error> {
        let mut slot = self.registries.lock();
        if let Some(r) = &*slot {
            return Ok(Arc::clone(r));
        }
        let loaded = Arc::new(Registries::load(&self.registries_conf)?);
        *slot = Some(Arc::clone(&loaded));
        Ok(loaded)
    }

    /// The endpoints for `reference` (tag or digest) of `repository` on `host`, in order.
    pub(super) fn endpoints(
        &self,
        host: &str,
        repository: &str,
        reference: &str,
    ) -> Result<Arc<Vec<Endpoint>>, Error> {
        Ok(Arc::new(
            self.registries()?.endpoints(host, repository, reference)?,
        ))
    }

    /// Remember the endpoints a resolve used, for the blobs of the same repository.
    pub(super) fn remember_route(&self, host: &str, repository: &str, route: Arc<Vec<Endpoint>>) {
        self.routes
            .lock()
            .insert((host.to_owned(), repository.to_owned()), route);
    }

    /// The endpoints a blob of `repository` on `host` is fetched from: those of the last
    /// resolve of that repository, else those of a pull by `digest`.
    pub(super) fn blob_route(
        &self,
        host: &str,
        repository: &str,
        digest: &str,
    ) -> Result<Arc<Vec<Endpoint>>, Error> {
        let known = self
            .routes
            .lock()
            .get(&(host.to_owned(), repository.to_owned()))
            .cloned();
        match known {
            Some(route) => Ok(route),
            None => self.endpoints(host, repository, digest),
        }
    }

    /// Run `op` against each endpoint in turn until one succeeds. With one endpoint its error
    /// is returned as it is; otherwise every failure is reported, in order. A mirror that
    /// cannot be reached at all is not tried again by this client.
    pub(super) fn on_endpoints<T>(
        &self,
        route: &[Endpoint],
        what: &str,
        mut op: impl FnMut(&Repo<'_>, &Endpoint) -> Result<T, Error>,
    ) -> Result<T, Error> {
        let mut failures: Vec<EndpointFailure> = Vec::new();
        let last = route.len().saturating_sub(1);
        for (i, endpoint) in route.iter().enumerate() {
            let repo = self.repo_at(endpoint)?;
            if i < last && self.down.lock().contains(&repo.api_host) {
                continue;
            }
            match op(&repo, endpoint) {
                Ok(found) => return Ok(found),
                Err(e) => {
                    if i < last {
                        tracing::warn!(%endpoint, error = %e, "mirror failed, trying the next one");
                        if matches!(e, Error::Transport { .. }) {
                            self.down.lock().insert(repo.api_host.clone());
                        }
                    }
                    let role = if endpoint.mirror {
                        format!("mirror {}", i + 1)
                    } else {
                        "registry".to_owned()
                    };
                    failures.push(EndpointFailure {
                        endpoint: role,
                        error: Box::new(e),
                    });
                }
            }
        }
        if failures.len() == 1 {
            if let Some(only) = failures.pop() {
                return Err(*only.error);
            }
        }
        Err(Error::Endpoints {
            what: what.to_owned(),
            failures,
        })
    }
}
