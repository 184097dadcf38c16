//! The cost of librdkafka alone, for `make bench`: produces one message per line of a file to
//! an in-process mock cluster with perapera's producer defaults, the same payload shape (a
//! MessagePack map of `message`, `path`, `host`), no headers (perapera's default;
//! `FLOOR_HEADERS=N` adds the first N of `[sink] headers`) and a delivery callback per
//! message, keeping at most 10 000 messages in flight (perapera's default window), and exits
//! once every message was acknowledged. No checkpoint, no pipeline: the
//! floor under any shipper built on librdkafka.
//!
//! Usage: librdkafka_floor FILE [KEY=VALUE librdkafka properties...]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::ClientContext;

/// The allocator perapera uses, so that the two compare like for like.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Counter(Arc<AtomicUsize>);

impl ClientContext for Counter {}

impl ProducerContext for Counter {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((e, _)) = result {
            eprintln!("librdkafka_floor: delivery failed: {e}");
            std::process::exit(1);
        }
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let path = args
        .next()
        .ok_or("usage: librdkafka_floor FILE [KEY=VALUE...]")?;
    let mut config = ClientConfig::new();
    for (k, v) in [
        ("test.mock.num.brokers", "1"),
        ("acks", "all"),
        ("enable.idempotence", "true"),
        ("compression.type", "lz4"),
        ("linger.ms", "5"),
    ] {
        config.set(k, v);
    }
    for kv in args {
        let (k, v) = kv.split_once('=').ok_or("properties are KEY=VALUE")?;
        config.set(k, v);
    }
    let acked = Arc::new(AtomicUsize::new(0));
    let producer: ThreadedProducer<Counter> = config.create_with_context(Counter(acked.clone()))?;
    let data = std::fs::read(&path)?;
    let mut payload = Vec::with_capacity(4096);
    let mut position = String::new();
    let mut sent = 0usize;
    // perapera sends no headers by default; FLOOR_HEADERS=1..3 adds position, source and
    // content-type, as `[sink] headers` does.
    let n_headers: usize = std::env::var("FLOOR_HEADERS").map_or(0, |v| v.parse().unwrap_or(0));
    let mut offset = 0usize;
    for line in data.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        offset += line.len() + 1;
        payload.clear();
        rmp::encode::write_map_len(&mut payload, 3)?;
        rmp::encode::write_str(&mut payload, "message")?;
        rmp::encode::write_str(&mut payload, std::str::from_utf8(line)?)?;
        rmp::encode::write_str(&mut payload, "path")?;
        rmp::encode::write_str(&mut payload, &path)?;
        rmp::encode::write_str(&mut payload, "host")?;
        rmp::encode::write_str(&mut payload, "web-17.fra2.example.net")?;
        let mut record = BaseRecord::<(), [u8], ()>::to("bench").payload(&payload[..]);
        if n_headers > 0 {
            position.clear();
            position.push_str(&path);
            position.push(':');
            position.push_str(&offset.to_string());
            let mut headers = OwnedHeaders::new_with_capacity(n_headers);
            for (key, value) in [
                ("perapera-position", position.as_str()),
                ("perapera-source", "bench"),
                ("content-type", "application/msgpack"),
            ]
            .into_iter()
            .take(n_headers)
            {
                headers = headers.insert(Header {
                    key,
                    value: Some(value),
                });
            }
            record = record.headers(headers);
        }
        while sent - acked.load(Ordering::Relaxed) >= 10_000 {
            std::thread::sleep(Duration::from_micros(500));
        }
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((_, r)) => {
                    record = r;
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        }
        sent += 1;
    }
    while acked.load(Ordering::Relaxed) < sent {
        std::thread::sleep(Duration::from_millis(1));
    }
    producer.flush(Duration::from_secs(10))?;
    println!("{sent}");
    Ok(())
}
