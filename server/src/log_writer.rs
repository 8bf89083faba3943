//! The writer under the broker's logs: a log line that cannot be written is lost, and
//! nothing else happens.
//!
//! tidelogd logs to stderr, which may be a pipe whose reader has gone (`tidelogd 2>&1 |
//! head`, a log shipper that died): every write then fails with EPIPE (Rust ignores
//! SIGPIPE, so the process is not killed). tracing-subscriber reports a failed write
//! with `eprintln!`, and `eprintln!` panics when stderr fails, so the task that logged
//! (a signal handler, an RPC, the shutdown path) died half-way. [`Lossy`] answers every
//! write with success instead, so a logging failure can never stop serving or
//! shutting down.

use std::io;

use tracing_subscriber::fmt::MakeWriter;

/// A [`MakeWriter`] whose writers swallow every error of the writers `M` makes.
#[derive(Debug, Clone, Copy, Default)]
pub struct Lossy<M>(pub M);

impl<'a, M: MakeWriter<'a>> MakeWriter<'a> for Lossy<M> {
    type Writer = LossyWriter<M::Writer>;

    fn make_writer(&'a self) -> Self::Writer {
        LossyWriter(self.0.make_writer())
    }

    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> Self::Writer {
        LossyWriter(self.0.make_writer_for(meta))
    }
}

/// Forwards to `W`; what `W` fails to write is dropped and reported as written.
#[derive(Debug)]
pub struct LossyWriter<W>(W);

impl<W: io::Write> io::Write for LossyWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self.0.write(buf) {
            // `write_all` retries an interrupted write; keep that.
            Err(error) if error.kind() == io::ErrorKind::Interrupted => Err(error),
            Err(_) => Ok(buf.len()),
            Ok(written) => Ok(written),
        }
    }

    /// One log event is one `write_all`: it is written whole or dropped whole.
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        let _ = self.0.write_all(buf);
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        let _ = self.0.flush();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use super::*;

    /// Fails every call with `kind`, counting them.
    struct Failing {
        kind: io::ErrorKind,
        calls: usize,
    }

    impl io::Write for Failing {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            self.calls += 1;
            Err(self.kind.into())
        }
        fn flush(&mut self) -> io::Result<()> {
            Err(self.kind.into())
        }
    }

    #[test]
    fn a_broken_pipe_is_swallowed() {
        let mut writer = LossyWriter(Failing {
            kind: io::ErrorKind::BrokenPipe,
            calls: 0,
        });
        assert_eq!(writer.write(b"line\n").unwrap(), 5);
        writer.write_all(b"line\n").unwrap();
        writer.flush().unwrap();
        assert_eq!(writer.0.calls, 2);
    }

    #[test]
    fn an_interrupted_write_is_retried_by_write_all() {
        struct InterruptedOnce(Vec<u8>, bool);
        impl io::Write for InterruptedOnce {
            fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
                if std::mem::replace(&mut self.1, false) {
                    return Err(io::ErrorKind::Interrupted.into());
                }
                self.0.write(buf)
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let mut writer = LossyWriter(InterruptedOnce(Vec::new(), true));
        writer.write_all(b"line\n").unwrap();
        assert_eq!(writer.0.0, b"line\n");
        let mut writer = LossyWriter(InterruptedOnce(Vec::new(), true));
        let error = writer.write(b"line\n").unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::Interrupted);
    }
}
