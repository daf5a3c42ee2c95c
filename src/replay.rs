//! Which request bodies can be sent a second time after a `401`.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

/// A request body the [`KoppeltaalAuthLayer`](crate::KoppeltaalAuthLayer) can replay after a
/// `401 Unauthorized`.
///
/// Replaying means keeping a copy of the body before the request is sent. In-memory bodies are
/// cheap to copy (`Bytes` and `Full<Bytes>` bump a reference count): `Full`, `Empty`, `String`,
/// `Vec<u8>`, `Bytes`, `&'static str`, `&'static [u8]` and `()` replay. Streaming bodies cannot:
/// `BoxBody`, `UnsyncBoxBody`, `StreamBody` and hyper's `Incoming` return `None`, and a `401` to
/// such a request is handed back to the caller (after the token is renewed for the next request).
///
/// For your own body type, implement this trait, or wrap the body: [`Replayable`] for a `Clone`
/// body, [`NotReplayable`] for one that must be sent once.
///
/// # Example
///
/// ```
/// use koppeltaal_auth::ReplayBody;
///
/// #[derive(Clone)]
/// struct JsonBody(bytes::Bytes);
///
/// impl ReplayBody for JsonBody {
///     fn try_clone_body(&self) -> Option<Self> {
///         Some(self.clone())
///     }
/// }
/// ```
pub trait ReplayBody: Sized {
    /// A copy of the body to send again, or `None` when it cannot be replayed.
    fn try_clone_body(&self) -> Option<Self>;
}

macro_rules! replay_by_clone {
    ($($ty:ty),* $(,)?) => {
        $(
            impl ReplayBody for $ty {
                fn try_clone_body(&self) -> Option<Self> {
                    Some(self.clone())
                }
            }
        )*
    };
}

replay_by_clone!(String, Vec<u8>, Bytes, (), &'static str, &'static [u8]);

impl<D: Clone> ReplayBody for http_body_util::Full<D> {
    fn try_clone_body(&self) -> Option<Self> {
        Some(self.clone())
    }
}

impl<D> ReplayBody for http_body_util::Empty<D> {
    fn try_clone_body(&self) -> Option<Self> {
        Some(Self::new())
    }
}

impl<D, E> ReplayBody for http_body_util::combinators::BoxBody<D, E> {
    fn try_clone_body(&self) -> Option<Self> {
        None
    }
}

impl<D, E> ReplayBody for http_body_util::combinators::UnsyncBoxBody<D, E> {
    fn try_clone_body(&self) -> Option<Self> {
        None
    }
}

impl<S> ReplayBody for http_body_util::StreamBody<S> {
    fn try_clone_body(&self) -> Option<Self> {
        None
    }
}

impl ReplayBody for hyper::body::Incoming {
    fn try_clone_body(&self) -> Option<Self> {
        None
    }
}

impl<L: ReplayBody, R: ReplayBody> ReplayBody for http_body_util::Either<L, R> {
    fn try_clone_body(&self) -> Option<Self> {
        match self {
            Self::Left(left) => left.try_clone_body().map(Self::Left),
            Self::Right(right) => right.try_clone_body().map(Self::Right),
        }
    }
}

pin_project! {
    /// Marks a `Clone` body as replayable. A transparent [`Body`].
    #[derive(Clone, Debug, Default)]
    pub struct Replayable<B> {
        #[pin]
        inner: B,
    }
}

pin_project! {
    /// Marks a body as not replayable: it is sent once, and a `401` to it is returned as is.
    /// A transparent [`Body`].
    #[derive(Debug, Default)]
    pub struct NotReplayable<B> {
        #[pin]
        inner: B,
    }
}

impl<B> Replayable<B> {
    /// Wraps `inner`.
    pub fn new(inner: B) -> Self {
        Self { inner }
    }

    /// Unwraps the body.
    pub fn into_inner(self) -> B {
        self.inner
    }
}

impl<B> NotReplayable<B> {
    /// Wraps `inner`.
    pub fn new(inner: B) -> Self {
        Self { inner }
    }

    /// Unwraps the body.
    pub fn into_inner(self) -> B {
        self.inner
    }
}

impl<B: Clone> ReplayBody for Replayable<B> {
    fn try_clone_body(&self) -> Option<Self> {
        Some(self.clone())
    }
}

impl<B> ReplayBody for NotReplayable<B> {
    fn try_clone_body(&self) -> Option<Self> {
        None
    }
}

macro_rules! delegate_body {
    ($wrapper:ident) => {
        impl<B: Body> Body for $wrapper<B> {
            type Data = B::Data;
            type Error = B::Error;

            fn poll_frame(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
            ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
                self.project().inner.poll_frame(cx)
            }

            fn is_end_stream(&self) -> bool {
                self.inner.is_end_stream()
            }

            fn size_hint(&self) -> SizeHint {
                self.inner.size_hint()
            }
        }
    };
}

delegate_body!(Replayable);
delegate_body!(NotReplayable);

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full};

    #[tokio::test]
    async fn in_memory_bodies_replay_streams_do_not() {
        let full = Full::new(Bytes::from_static(b"{\"resourceType\":\"Task\"}"));
        let copy = full.try_clone_body().unwrap();
        assert_eq!(
            copy.collect().await.unwrap().to_bytes(),
            full.collect().await.unwrap().to_bytes()
        );
        assert_eq!(String::from("x").try_clone_body().as_deref(), Some("x"));
        assert!(().try_clone_body().is_some());
        assert!(
            http_body_util::Empty::<Bytes>::new()
                .try_clone_body()
                .is_some()
        );
        let boxed = Full::new(Bytes::new())
            .map_err(|never| match never {})
            .boxed();
        assert!(boxed.try_clone_body().is_none());
        assert!(
            NotReplayable::new(Full::new(Bytes::new()))
                .try_clone_body()
                .is_none()
        );
        let wrapped = Replayable::new(Full::new(Bytes::from_static(b"abc")));
        let copy = wrapped.try_clone_body().unwrap();
        assert_eq!(copy.collect().await.unwrap().to_bytes(), "abc");
    }
}
