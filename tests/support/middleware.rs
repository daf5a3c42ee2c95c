//! What the reqwest middleware tests share: clients with the middleware.

use koppeltaal_auth::Authenticator;
use reqwest_middleware::{ClientBuilder, ClientWithMiddleware};

/// A client with the middleware, and reqwest's own redirect policy.
pub fn client(auth: &Authenticator) -> ClientWithMiddleware {
    ClientBuilder::new(reqwest::Client::new())
        .with(auth.middleware())
        .build()
}

/// A client with the middleware and `auth.redirect_policy()`.
pub fn guarded(auth: &Authenticator) -> ClientWithMiddleware {
    let http = reqwest::Client::builder()
        .redirect(auth.redirect_policy())
        .build()
        .unwrap();
    ClientBuilder::new(http).with(auth.middleware()).build()
}
