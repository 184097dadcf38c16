//! The stdout sink: one JSON object per line, acknowledged once written and flushed. It is the
//! embedded default, so that `perapera run` shows what it would ship without any broker.

use std::io::Write;

use tokio::sync::mpsc;

mod json;

use crate::sink::{Ack, DeliveryError, Outgoing, SendError};

/// Writes JSON lines to standard output.
pub struct StdoutSink {
    acks: mpsc::UnboundedSender<Ack>,
    buf: Vec<u8>,
    pending: Vec<u64>,
}

impl StdoutSink {
    /// A sink reporting to `acks`.
    pub fn new(acks: mpsc::UnboundedSender<Ack>) -> StdoutSink {
        StdoutSink {
            acks,
            buf: Vec::with_capacity(1 << 16),
            pending: Vec::new(),
        }
    }

    /// Buffers one line; it is written and acknowledged by [`StdoutSink::flush_burst`].
    pub fn send(&mut self, out: Outgoing<'_>) -> Result<(), SendError> {
        json::json_line_into(out.record, &mut self.buf);
        self.pending.push(out.id);
        if self.buf.len() >= 1 << 20 {
            self.flush_burst();
        }
        Ok(())
    }

    /// Writes and flushes the buffered lines, then acknowledges them.
    pub fn flush_burst(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let mut out = std::io::stdout().lock();
        let result = out.write_all(&self.buf).and_then(|()| out.flush());
        self.buf.clear();
        let result = result.map_err(|e| {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                DeliveryError::Closed(format!(
                    "standard output was closed ({e}): its reader exited, e.g. `| head`"
                ))
            } else {
                DeliveryError::Fatal(format!("writing to stdout: {e}"))
            }
        });
        for id in self.pending.drain(..) {
            let _ = self.acks.send(Ack {
                id,
                result: result.clone(),
            });
        }
    }
}
