//! The thread that serves a producer's main queue: delivery reports and client errors.
//!
//! It blocks in `rd_kafka_queue_poll` until an event arrives (or 10 s pass), and is woken
//! with `rd_kafka_queue_yield` to stop. rdkafka's own `poll` (and its `ThreadedProducer`)
//! loops until a deadline and turns the remaining time into whole milliseconds, so the last
//! sub-millisecond of every call became a zero timeout polled in a tight loop: about 1 % of a
//! core on an idle host.

use std::ffi::CStr;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use rdkafka::bindings as rd;
use rdkafka::client::ClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, Producer};

use super::report::{classify, Context, Delivery};

/// How long one wait for an event lasts at most: a stop wakes it at once, so this only
/// bounds how long a lost wake-up could delay it.
const WAIT_MS: i32 = 10_000;

/// A reference to a producer's main queue.
struct Queue(NonNull<rd::rd_kafka_queue_t>);

// SAFETY: librdkafka queues are thread-safe; the reference is destroyed once, after the
// thread that polls it has been joined.
unsafe impl Send for Queue {}
unsafe impl Sync for Queue {}

impl Drop for Queue {
    fn drop(&mut self) {
        // SAFETY: our own reference, from rd_kafka_queue_get_main.
        unsafe { rd::rd_kafka_queue_destroy(self.0.as_ptr()) };
    }
}

/// Serves the reports of one producer on a thread of its own until dropped.
pub struct Poller {
    stop: Arc<AtomicBool>,
    queue: Arc<Queue>,
    thread: Option<JoinHandle<()>>,
}

impl Poller {
    /// Starts the thread (named `kafka-reports`).
    pub fn start(producer: &Arc<BaseProducer<Context>>) -> std::io::Result<Poller> {
        // SAFETY: a live producer handle; the queue reference is released by `Queue`.
        let queue = unsafe { rd::rd_kafka_queue_get_main(producer.client().native_ptr()) };
        let queue = Arc::new(Queue(NonNull::new(queue).ok_or_else(|| {
            std::io::Error::other("librdkafka has no main queue for the producer")
        })?));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (stop, queue, producer) = (stop.clone(), queue.clone(), producer.clone());
            std::thread::Builder::new()
                .name("kafka-reports".into())
                .spawn(move || serve(&producer, &queue, &stop))?
        };
        Ok(Poller {
            stop,
            queue,
            thread: Some(thread),
        })
    }
}

impl Drop for Poller {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        // SAFETY: the queue reference is alive (we hold one).
        unsafe { rd::rd_kafka_queue_yield(self.queue.0.as_ptr()) };
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn serve(producer: &BaseProducer<Context>, queue: &Queue, stop: &AtomicBool) {
    let context = producer.context();
    let mut messages: Vec<*const rd::rd_kafka_message_t> = Vec::new();
    while !stop.load(Ordering::Acquire) {
        // SAFETY: the queue is alive; a returned event is ours to destroy.
        let event = unsafe { rd::rd_kafka_queue_poll(queue.0.as_ptr(), WAIT_MS) };
        if event.is_null() {
            continue; // timed out, or woken to stop
        }
        // SAFETY: a live event, destroyed once below.
        match unsafe { rd::rd_kafka_event_type(event) } {
            rd::RD_KAFKA_EVENT_DR => unsafe { deliveries(context, event, &mut messages) },
            rd::RD_KAFKA_EVENT_ERROR => unsafe { error(context, event) },
            // Statistics (off unless configured) and OAUTHBEARER refreshes (librdkafka's own
            // OIDC handles those): nothing of ours.
            _ => {}
        }
        // SAFETY: as above.
        unsafe { rd::rd_kafka_event_destroy(event) };
    }
}

/// Turns each message of a delivery-report event into an ack.
///
/// # Safety
/// `event` is a live delivery-report event whose messages carry a [`Delivery`] box as their
/// opaque (every message perapera produces does, see `produce`).
unsafe fn deliveries(
    context: &Context,
    event: *mut rd::rd_kafka_event_t,
    messages: &mut Vec<*const rd::rd_kafka_message_t>,
) {
    let n = rd::rd_kafka_event_message_count(event);
    messages.clear();
    messages.reserve(n);
    let got = rd::rd_kafka_event_message_array(event, messages.as_mut_ptr(), n);
    messages.set_len(got.min(n));
    for &m in messages.iter() {
        let Some(m) = m.as_ref() else {
            continue;
        };
        if m._private.is_null() {
            continue;
        }
        // The box given to librdkafka with the message; its report comes exactly once.
        let delivery = Box::from_raw(m._private as *mut Delivery);
        let result = if m.err == rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
            Ok(())
        } else {
            let topic = CStr::from_ptr(rd::rd_kafka_topic_name(m.rkt)).to_string_lossy();
            let code = RDKafkaErrorCode::from(m.err);
            Err(classify(&KafkaError::MessageProduction(code), &topic))
        };
        context.ack(delivery.id, result);
    }
}

/// A client error (what rdkafka's own poll would hand to `ClientContext::error`).
///
/// # Safety
/// `event` is a live error event.
unsafe fn error(context: &Context, event: *mut rd::rd_kafka_event_t) {
    let code = RDKafkaErrorCode::from(rd::rd_kafka_event_error(event));
    let reason = CStr::from_ptr(rd::rd_kafka_event_error_string(event)).to_string_lossy();
    context.error(KafkaError::Global(code), reason.trim());
}
