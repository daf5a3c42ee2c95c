//! HTTP plumbing shared by the token client and discovery.

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use zeroize::Zeroizing;

use crate::error::{Error, ErrorKind};

/// Largest token-endpoint or discovery body read (DESIGN section 6). A token response is a few
/// hundred bytes; anything near this is not one.
pub(crate) const MAX_BODY: usize = 64 * 1024;

/// Default timeout for one token or discovery request, connect included.
pub(crate) const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// The HTTP client used when the caller brings none: no redirects (a token request must not be
/// sent anywhere else), no proxy (not even from the environment: `HTTP_PROXY` would see every
/// client assertion) unless `proxy` is given, a request timeout.
pub(crate) fn default_client(
    timeout: Duration,
    proxy: Option<reqwest::Proxy>,
) -> Result<reqwest::Client, Error> {
    let builder = reqwest::Client::builder()
        .no_proxy()
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(5)))
        .user_agent(concat!("koppeltaal-auth/", env!("CARGO_PKG_VERSION")));
    let builder = match proxy {
        Some(proxy) => builder.proxy(proxy),
        None => builder,
    };
    finish_client(builder)
}

/// Builds a token or discovery client from `builder`, with redirects turned off whatever it
/// says: a redirected token request would hand a live client assertion to another server.
pub(crate) fn finish_client(builder: reqwest::ClientBuilder) -> Result<reqwest::Client, Error> {
    builder
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|err| Error::config("cannot build the HTTP client").with_source(err))
}

/// Reads a response body, refusing (without reading on) one larger than `limit`.
pub(crate) async fn read_limited(
    mut response: reqwest::Response,
    limit: usize,
) -> Result<Bytes, Error> {
    let status = response.status();
    let too_large = || {
        Error::new(
            ErrorKind::ResponseTooLarge,
            format!("more than {} KiB", limit / 1024),
        )
        .with_status(status)
    };
    if response
        .content_length()
        .is_some_and(|len| len > limit as u64)
    {
        return Err(too_large());
    }
    // A token response holds a token: the buffer is wiped when it grows and when it is dropped.
    let expected = response
        .content_length()
        .and_then(|len| usize::try_from(len).ok())
        .unwrap_or(0);
    let mut body = Zeroizing::new(Vec::with_capacity(expected));
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|err| Error::from_reqwest("the response body broke off", err))?
    {
        if body.len() + chunk.len() > limit {
            return Err(too_large());
        }
        crate::wipe::extend(&mut body, &chunk, limit);
    }
    Ok(crate::wipe::bytes(body))
}

/// Reads at most the first `limit` bytes of the body of an error response (a status that is
/// not a success), for its message: the rest of a big error page (a WAF's or a maintenance
/// page), or a body that breaks off, loses nothing that matters, while an error for it would
/// lose the status and its `Retry-After`.
pub(crate) async fn read_error_body(mut response: reqwest::Response, limit: usize) -> Bytes {
    // It may echo what was sent (the assertion): wiped as a token response is.
    let mut body = Zeroizing::new(Vec::new());
    while body.len() < limit {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                let room = limit - body.len();
                let chunk = chunk.get(..room).unwrap_or(&chunk);
                crate::wipe::extend(&mut body, chunk, limit);
            }
            Ok(None) => break,
            Err(error) => {
                tracing::debug!(%error, "the error response's body broke off");
                break;
            }
        }
    }
    crate::wipe::bytes(body)
}

/// `operation`, cut off after `bound` (when there is one: a client with no timeout of this
/// crate's) with [`ErrorKind::Timeout`] (`what` says what did not come). On a runtime without
/// timers (where tokio panics on one; the check catches tokio's panic, which a panic hook sees)
/// it runs without the cut-off.
pub(crate) async fn bounded<T>(
    bound: Option<Duration>,
    what: &str,
    operation: impl Future<Output = Result<T, Error>>,
) -> Result<T, Error> {
    let Some(bound) = bound.filter(|_| crate::token::has_timers()) else {
        return operation.await;
    };
    tokio::time::timeout(bound, operation)
        .await
        .map_err(|_| Error::new(ErrorKind::Timeout, format!("{what} within {bound:?}")))?
}
