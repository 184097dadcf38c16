//! Topic handles by name, at most `max_topics` of them rendered from the template.

use std::collections::HashMap;
use std::ffi::CString;
use std::ptr::NonNull;
use std::time::Instant;

use rdkafka::bindings as rd;
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::types::RDKafka;

use crate::config::TOPIC_IDLE;

/// Why [`Topics::get`] gave no handle.
pub enum Refused {
    /// `max_topics` topics are in use and none has been idle for [`TOPIC_IDLE`].
    Bound(usize),
    /// librdkafka refused to make one.
    Handle(String),
}

/// Topic handles by name, made once per topic instead of once per message (`rd_kafka_producev`
/// with a topic name allocates a C string and looks the topic up under a lock every time).
/// Templated topics (`logs.{_SYSTEMD_UNIT}`) make one handle per distinct name, and at most
/// `max` of them exist: every topic librdkafka knows costs memory and a place in each
/// metadata request, so a template over untrusted fields must not make endless ones.
pub struct Topics {
    handles: HashMap<String, Handle>,
    /// The last topic used and its handle: most messages go where the one before went, and
    /// comparing the name is cheaper than hashing it (its `used` is refreshed when another
    /// topic is used).
    last: Option<(String, NonNull<rd::rd_kafka_topic_t>)>,
    /// Handles that count towards `max`.
    counted: usize,
    max: usize,
}

struct Handle {
    topic: NonNull<rd::rd_kafka_topic_t>,
    used: Instant,
    /// Made for a topic rendered from the template (not the fallback or dead-letter topic).
    counted: bool,
}

// SAFETY: librdkafka topic handles are reference-counted and thread-safe; this map is only
// used from the pipeline thread anyway.
unsafe impl Send for Topics {}

impl Topics {
    pub fn new(max: usize) -> Topics {
        Topics {
            handles: HashMap::new(),
            last: None,
            counted: 0,
            max: max.max(1),
        }
    }

    /// The handle for `name` on producer `rk`, made on first use; a `counted` one only while
    /// fewer than `max` counted ones exist.
    pub fn get(
        &mut self,
        rk: *mut RDKafka,
        name: &str,
        counted: bool,
    ) -> Result<*mut rd::rd_kafka_topic_t, Refused> {
        if let Some((last, t)) = &self.last {
            if last == name {
                return Ok(t.as_ptr());
            }
        }
        let now = Instant::now();
        if let Some((last, _)) = &self.last {
            if let Some(h) = self.handles.get_mut(last.as_str()) {
                h.used = now;
            }
        }
        if let Some(h) = self.handles.get_mut(name) {
            h.used = now;
            let t = h.topic;
            self.remember(name, t);
            return Ok(t.as_ptr());
        }
        if counted && self.counted >= self.max && !self.evict_idle(now) {
            return Err(Refused::Bound(self.counted));
        }
        let cname = CString::new(name).map_err(|e| Refused::Handle(e.to_string()))?;
        // SAFETY: rk is a live producer handle; a NULL topic configuration means the default.
        let handle = unsafe { rd::rd_kafka_topic_new(rk, cname.as_ptr(), std::ptr::null_mut()) };
        let handle = NonNull::new(handle).ok_or_else(|| {
            // SAFETY: reads librdkafka's thread-local last error.
            let code = unsafe { rd::rd_kafka_last_error() };
            Refused::Handle(RDKafkaErrorCode::from(code).to_string())
        })?;
        self.handles.insert(
            name.to_string(),
            Handle {
                topic: handle,
                used: now,
                counted,
            },
        );
        self.counted += usize::from(counted);
        self.remember(name, handle);
        Ok(handle.as_ptr())
    }

    /// Topics with a handle (counted or not).
    pub fn len(&self) -> usize {
        self.handles.len()
    }

    /// Releases the handle of `name`, if it has one that counts towards `max`.
    pub fn forget(&mut self, name: &str) {
        if self.handles.get(name).is_some_and(|h| h.counted) {
            self.release(name);
        }
    }

    /// Releases the least recently used counted handle if it has been idle for
    /// [`TOPIC_IDLE`] (messages in flight hold their own references, so releasing ours is
    /// safe).
    fn evict_idle(&mut self, now: Instant) -> bool {
        let oldest = self
            .handles
            .iter()
            .filter(|(_, h)| h.counted)
            .min_by_key(|(_, h)| h.used)
            .filter(|(_, h)| now.duration_since(h.used) >= TOPIC_IDLE)
            .map(|(name, _)| name.clone());
        let Some(name) = oldest else {
            return false;
        };
        self.release(&name);
        true
    }

    fn release(&mut self, name: &str) {
        if let Some(h) = self.handles.remove(name) {
            if self.last.as_ref().is_some_and(|(l, _)| l == name) {
                self.last = None;
            }
            self.counted -= usize::from(h.counted);
            // SAFETY: made by rd_kafka_topic_new, released once (it left the map).
            unsafe { rd::rd_kafka_topic_destroy(h.topic.as_ptr()) };
        }
    }

    fn remember(&mut self, name: &str, handle: NonNull<rd::rd_kafka_topic_t>) {
        match &mut self.last {
            Some((last, t)) => {
                last.clear();
                last.push_str(name);
                *t = handle;
            }
            None => self.last = Some((name.to_string(), handle)),
        }
    }

    /// Releases every handle (before their producer is destroyed).
    pub fn clear(&mut self) {
        self.last = None;
        self.counted = 0;
        for (_, h) in self.handles.drain() {
            // SAFETY: each handle was made by rd_kafka_topic_new and is released once.
            unsafe { rd::rd_kafka_topic_destroy(h.topic.as_ptr()) };
        }
    }
}

impl Drop for Topics {
    fn drop(&mut self) {
        self.clear();
    }
}
