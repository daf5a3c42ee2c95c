//! What the layer tests share: hyper-util's client, requests, and in-process inner services.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use koppeltaal_auth::KoppeltaalAuth;

pub type HyperClient<B = Full<Bytes>> = Client<HttpConnector, B>;

pub fn hyper_client() -> HyperClient {
    hyper_client_for()
}

pub fn hyper_client_for<B>() -> HyperClient<B>
where
    B: http_body::Body + Send + 'static + Unpin,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    Client::builder(TokioExecutor::new()).build_http()
}

pub fn get(url: &str) -> Request<Full<Bytes>> {
    Request::get(url).body(Full::default()).unwrap()
}

pub async fn body_text(response: Response<hyper::body::Incoming>) -> String {
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(bytes.to_vec()).unwrap()
}

/// An inner service that records the `Authorization` header of each request and answers `status`.
pub fn recording_service(
    seen: Arc<Mutex<Vec<Option<String>>>>,
    status: StatusCode,
) -> impl tower::Service<
    Request<Full<Bytes>>,
    Response = Response<Full<Bytes>>,
    Error = Infallible,
    Future = impl Send,
> + Clone {
    tower::service_fn(move |request: Request<Full<Bytes>>| {
        let seen = Arc::clone(&seen);
        async move {
            seen.lock().unwrap().push(
                request
                    .headers()
                    .get("authorization")
                    .map(|v| v.to_str().unwrap().to_owned()),
            );
            let mut response = Response::new(Full::default());
            *response.status_mut() = status;
            Ok::<_, Infallible>(response)
        }
    })
}

/// `ServiceExt`-style helper: apply a layer to a service.
pub trait LayerExt {
    fn layer_service<S>(&self, service: S) -> KoppeltaalAuth<S>;
}

impl LayerExt for koppeltaal_auth::KoppeltaalAuthLayer {
    fn layer_service<S>(&self, service: S) -> KoppeltaalAuth<S> {
        tower::Layer::layer(self, service)
    }
}

/// An inner service that records the `Authorization` values of every request (all of them, in
/// order) and answers with the status `answer` gives for them and those of the requests before.
pub fn authorization_recorder(
    seen: Arc<Mutex<Vec<Vec<String>>>>,
    answer: impl Fn(&[String], &[Vec<String>]) -> StatusCode + Clone + Send + Sync + 'static,
) -> impl tower::Service<
    Request<Full<Bytes>>,
    Response = Response<Full<Bytes>>,
    Error = Infallible,
    Future = impl Send,
> + Clone
+ Send
+ 'static {
    tower::service_fn(move |request: Request<Full<Bytes>>| {
        let values: Vec<String> = request
            .headers()
            .get_all(http::header::AUTHORIZATION)
            .iter()
            .map(|value| value.to_str().unwrap().to_owned())
            .collect();
        let mut seen = seen.lock().unwrap();
        let mut response = Response::new(Full::default());
        *response.status_mut() = answer(&values, &seen);
        seen.push(values);
        std::future::ready(Ok::<_, Infallible>(response))
    })
}

/// A service that answers `401` to its first request and is then slow to get ready (15 s, as a
/// concurrency limit under load may be), recording each request's token.
#[derive(Default)]
pub struct SlowToReady {
    sent: Arc<Mutex<Vec<String>>>,
    sleep: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl Clone for SlowToReady {
    fn clone(&self) -> Self {
        Self {
            sent: Arc::clone(&self.sent),
            sleep: None,
        }
    }
}

impl SlowToReady {
    /// The `Authorization` header of each request, in order.
    pub fn sent(&self) -> Vec<String> {
        self.sent.lock().unwrap().clone()
    }
}

impl tower::Service<Request<Full<Bytes>>> for SlowToReady {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        if !self.sent.lock().unwrap().is_empty() {
            let sleep = self.sleep.get_or_insert_with(|| {
                Box::pin(tokio::time::sleep(std::time::Duration::from_secs(15)))
            });
            std::task::ready!(std::future::Future::poll(sleep.as_mut(), cx));
        }
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Full<Bytes>>) -> Self::Future {
        let token = request.headers()[http::header::AUTHORIZATION]
            .to_str()
            .unwrap()
            .to_owned();
        let mut sent = self.sent.lock().unwrap();
        sent.push(token);
        let mut response = Response::new(Full::default());
        if sent.len() == 1 {
            *response.status_mut() = StatusCode::UNAUTHORIZED;
        }
        std::future::ready(Ok(response))
    }
}
