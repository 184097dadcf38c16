//! One message into librdkafka, without copying its payload.

use std::ffi::{c_void, CStr};
use std::sync::Arc;

use rdkafka::bindings as rd;
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::types::RDKafka;

use super::report::Delivery;
use crate::config::KafkaHeader;

/// One message for [`produce`].
pub struct Message<'a> {
    pub topic: *mut rd::rd_kafka_topic_t,
    pub payload: Arc<Vec<u8>>,
    pub key: Option<&'a [u8]>,
    pub id: u64,
    pub timestamp_ms: i64,
    /// Which headers, and the values of the source and position headers.
    pub headers: &'a [KafkaHeader],
    pub source: &'a str,
    pub position: &'a str,
    /// `perapera-topic`: the topic a rerouted entry was meant for.
    pub meant_for: Option<&'a str>,
}

/// Enqueues a message with `rd_kafka_produceva`. Key and headers are copied by librdkafka;
/// the payload is not (no `RD_KAFKA_MSG_F_COPY`): the delivery opaque, a [`Delivery`] box,
/// holds a reference to it until [`Context::delivery`] has run for this message, and the
/// bytes behind an `Arc` of a record never change. One copy less of every message in flight.
pub fn produce(rk: *mut RDKafka, m: Message<'_>) -> Result<(), RDKafkaErrorCode> {
    use rd::rd_kafka_vtype_t as T;
    fn vu(vtype: T, u: rd::rd_kafka_vu_s__bindgen_ty_1) -> rd::rd_kafka_vu_t {
        rd::rd_kafka_vu_t { vtype, u }
    }
    type U = rd::rd_kafka_vu_s__bindgen_ty_1;
    let mem = |b: &[u8]| rd::rd_kafka_vu_s__bindgen_ty_1__bindgen_ty_1 {
        ptr: b.as_ptr() as *mut c_void,
        size: b.len(),
    };
    let header = |name: &CStr, value: &[u8]| {
        vu(
            T::RD_KAFKA_VTYPE_HEADER,
            U {
                header: rd::rd_kafka_vu_s__bindgen_ty_1__bindgen_ty_2 {
                    name: name.as_ptr(),
                    val: value.as_ptr() as *const c_void,
                    size: value.len() as isize,
                },
            },
        )
    };
    let delivery = Box::new(Delivery {
        id: m.id,
        _payload: m.payload.clone(),
    });
    // Turned back into the box by rdkafka's delivery report handling (Box<T>: IntoOpaque),
    // or below if librdkafka refuses the message.
    let opaque = Box::into_raw(delivery) as *mut c_void;
    let end = vu(T::RD_KAFKA_VTYPE_END, U { i: 0 });
    let mut vus = [
        vu(T::RD_KAFKA_VTYPE_RKT, U { rkt: m.topic }),
        vu(T::RD_KAFKA_VTYPE_MSGFLAGS, U { i: 0 }),
        vu(
            T::RD_KAFKA_VTYPE_VALUE,
            U {
                mem: mem(&m.payload),
            },
        ),
        vu(T::RD_KAFKA_VTYPE_OPAQUE, U { ptr: opaque }),
        vu(
            T::RD_KAFKA_VTYPE_TIMESTAMP,
            U {
                i64_: m.timestamp_ms,
            },
        ),
        end,
        end,
        end,
        end,
        end,
    ];
    // The five above, then up to three headers, perapera-topic and a key.
    let mut n = 5;
    for h in m.headers.iter().take(3) {
        let (name, value): (&CStr, &[u8]) = match h {
            KafkaHeader::Source => (c"perapera-source", m.source.as_bytes()),
            KafkaHeader::Position => (c"perapera-position", m.position.as_bytes()),
            KafkaHeader::ContentType => (c"content-type", b"application/msgpack"),
        };
        vus[n] = header(name, value);
        n += 1;
    }
    if let Some(meant) = m.meant_for {
        vus[n] = header(c"perapera-topic", meant.as_bytes());
        n += 1;
    }
    if let Some(key) = m.key {
        vus[n] = vu(T::RD_KAFKA_VTYPE_KEY, U { mem: mem(key) });
        n += 1;
    }
    // SAFETY: rk and the topic handle are live. Key and headers point into data that outlives
    // this call (librdkafka copies them). The payload stays alive until the delivery report:
    // `opaque` owns a reference to it.
    let error = unsafe { rd::rd_kafka_produceva(rk, vus.as_ptr(), n) };
    if error.is_null() {
        return Ok(());
    }
    // SAFETY: refused, so librdkafka kept neither the message nor the opaque: the box is
    // ours again. A non-NULL error returned by produceva is ours to read and destroy.
    let (code, fatal) = unsafe {
        drop(Box::from_raw(opaque as *mut Delivery));
        let code = rd::rd_kafka_error_code(error);
        let fatal = rd::rd_kafka_error_is_fatal(error) != 0;
        rd::rd_kafka_error_destroy(error);
        (code, fatal)
    };
    // produceva reports the underlying cause of a fatal producer state (e.g.
    // OUT_OF_ORDER_SEQUENCE_NUMBER) where producev said __FATAL: keep it fatal, so that the
    // pipeline recreates the producer.
    Err(if fatal {
        RDKafkaErrorCode::Fatal
    } else {
        RDKafkaErrorCode::from(code)
    })
}
