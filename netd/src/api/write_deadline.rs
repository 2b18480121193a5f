//! A connection that gives up on a client not reading its answer: a write that makes
//! no progress for a while fails, and hyper then closes the connection.
//!
//! The daemon's read timeouts end clients that stall sending; without this, one that
//! asked for large answers (a network's XML, many times pipelined) and never read them
//! would hold its connection slot and the answers' memory for as long as it liked.
//!
//! An event stream is exempt ([`Exemption`]): its subscriber may read slowly or pause,
//! and is told of the events it missed instead (the stream holds no more than a line).

use std::future::Future;
use std::io::IoSlice;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

/// Lifts a connection's write deadline once granted, for as long as it lasts.
#[derive(Clone, Debug, Default)]
pub struct Exemption(Arc<AtomicBool>);

impl Exemption {
    pub fn grant(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    fn granted(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// `inner`, whose writes fail once none has made progress for `limit`, unless
/// `exemption` is granted.
pub struct WriteDeadline<S> {
    inner: S,
    limit: Duration,
    exemption: Exemption,
    /// Running while the client is not reading: since the first write that could not
    /// go out.
    stalled: Option<Pin<Box<Sleep>>>,
}

impl<S> WriteDeadline<S> {
    pub fn new(inner: S, limit: Duration, exemption: Exemption) -> Self {
        WriteDeadline {
            inner,
            limit,
            exemption,
            stalled: None,
        }
    }

    /// What a write that got `poll` from the connection returns: its result, the
    /// stall forgotten, once it is ready; a timeout once the stall outlasts the limit.
    fn after<T>(
        &mut self,
        poll: Poll<std::io::Result<T>>,
        cx: &mut Context<'_>,
    ) -> Poll<std::io::Result<T>> {
        if poll.is_ready() || self.exemption.granted() {
            self.stalled = None;
            return poll;
        }
        let limit = self.limit;
        let stalled = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        match stalled.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("the client read nothing of its answer for {limit:?}"),
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for WriteDeadline<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for WriteDeadline<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.after(poll, cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.after(poll, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_flush(cx);
        self.after(poll, cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.after(poll, cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A client that reads nothing fails the write after the limit; one that reads,
    /// however slowly, keeps it going.
    #[tokio::test(start_paused = true)]
    async fn a_write_fails_only_after_the_limit_without_progress() {
        let (ours, mut client) = tokio::io::duplex(16);
        let exemption = Exemption::default();
        let mut ours = WriteDeadline::new(ours, Duration::from_secs(10), exemption.clone());
        let answer = vec![7u8; 64];
        let writing = tokio::spawn(async move {
            let written = ours.write_all(&answer).await;
            (written, ours)
        });
        // Read a little every 9 s: never 10 s without progress.
        let mut chunk = [0u8; 16];
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_secs(9)).await;
            client.read_exact(&mut chunk).await.expect("read");
        }
        tokio::time::sleep(Duration::from_secs(9)).await;
        client.read_exact(&mut chunk).await.expect("read");
        let (written, mut ours) = writing.await.expect("task");
        written.expect("a reading client gets its answer");

        // Now it stops reading.
        let started = tokio::time::Instant::now();
        let written = ours.write_all(&[1u8; 64]).await;
        let error = written.expect_err("a client that reads nothing");
        assert_eq!(error.kind(), std::io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), Duration::from_secs(10));

        // Exempt (an event stream), it waits as long as the client takes.
        exemption.grant();
        let writing = tokio::spawn(async move { ours.write_all(&[2u8; 16]).await });
        tokio::time::sleep(Duration::from_secs(60)).await;
        let mut drained = vec![0u8; 64];
        let _ = client.read(&mut drained).await.expect("read");
        writing.await.expect("task").expect("written once read");
    }
}
