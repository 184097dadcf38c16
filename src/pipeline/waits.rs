//! Entries waiting for a Kafka topic that cannot take them yet (unknown to the broker, not
//! authorized, beyond `max_topics`) when no `topic_fallback` is configured. They stay in the
//! window and are retried every [`TOPIC_RETRY`]; this table counts them per topic, so that
//! `/health` can name the topic once they have waited for `unhealthy_after`. With a
//! `topic_fallback` they go there instead ([`Pipeline::on_topic`] decides).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use super::Pipeline;
use crate::clock::unix_ms;
use crate::ops::metrics::TopicWait;

/// How often an entry waiting for a topic is offered to it again.
pub const TOPIC_RETRY: Duration = Duration::from_secs(1);

/// At most this many topics are published to `/health` and the metrics (the longest waiting).
const PUBLISHED: usize = 16;

struct Wait {
    since_ms: u64,
    entries: u64,
    reason: String,
}

/// Waiting entries per topic.
#[derive(Default)]
pub struct TopicWaits {
    by_topic: HashMap<Arc<str>, Wait>,
}

impl TopicWaits {
    /// An entry waits for `topic` (`held`: the name it already waits for, if any). Returns
    /// the name the entry now waits for, to keep on its slot.
    pub fn wait(
        &mut self,
        held: Option<Arc<str>>,
        topic: &str,
        reason: String,
        now_ms: u64,
    ) -> Arc<str> {
        match held {
            Some(h) if &*h == topic => {
                if let Some(w) = self.by_topic.get_mut(&h) {
                    w.reason = reason;
                }
                return h;
            }
            Some(h) => self.done(&h),
            None => {}
        }
        if let Some((name, _)) = self.by_topic.get_key_value(topic) {
            let name = name.clone();
            if let Some(w) = self.by_topic.get_mut(&name) {
                w.entries += 1;
                w.reason = reason;
            }
            return name;
        }
        let name: Arc<str> = Arc::from(topic);
        self.by_topic.insert(
            name.clone(),
            Wait {
                since_ms: now_ms,
                entries: 1,
                reason,
            },
        );
        name
    }

    /// An entry that waited for `topic` is done (delivered, rerouted or dropped).
    pub fn done(&mut self, topic: &Arc<str>) {
        if let Some(w) = self.by_topic.get_mut(topic) {
            w.entries = w.entries.saturating_sub(1);
            if w.entries == 0 {
                self.by_topic.remove(topic);
            }
        }
    }

    /// The longest waiting topics first, for `/health` and the metrics.
    pub fn published(&self) -> Vec<TopicWait> {
        let mut all: Vec<TopicWait> = self
            .by_topic
            .iter()
            .map(|(topic, w)| TopicWait {
                topic: topic.to_string(),
                since_ms: w.since_ms,
                entries: w.entries,
                reason: w.reason.clone(),
            })
            .collect();
        all.sort_unstable_by(|a, b| (a.since_ms, &a.topic).cmp(&(b.since_ms, &b.topic)));
        all.truncate(PUBLISHED);
        all
    }

    /// Topics waited for.
    pub fn len(&self) -> usize {
        self.by_topic.len()
    }
}

impl Pipeline {
    /// The entry's topic refused it (unknown, not authorized, beyond `max_topics`): it goes
    /// to the fallback topic if one is configured and it was not already going there (or to
    /// the dead-letter topic), else it waits and is offered again every [`TOPIC_RETRY`].
    pub(super) fn on_topic(
        &mut self,
        src: usize,
        seq: u64,
        topic: &str,
        reason: String,
        bound: bool,
    ) {
        let fallback = self.topic_fallback.as_deref();
        let source = &mut self.sources[src];
        let Some((slot, false)) = source.window.get_mut(seq) else {
            return;
        };
        let reroute = fallback.filter(|f| *f != topic && !slot.dead_letter);
        if let (Some(fallback), None) = (reroute, &slot.meant_for) {
            slot.meant_for = Some(topic.into());
            if let Some(w) = slot.waits_for.take() {
                self.topic_waits.done(&w);
            }
            let action = if bound {
                "rerouted_max_topics"
            } else {
                "rerouted_unknown_topic"
            };
            self.stats.failed(&source.name, action);
            if let Some(suppressed) = self.limit.allow(action) {
                tracing::warn!(source = %source.name, topic, fallback, %reason, suppressed,
                    "Kafka topic cannot take entries; sending them to [sink] topic_fallback with a perapera-topic header");
            }
            if !bound {
                // Refused by the broker: the topic's place in max_topics is free for another.
                self.sink.forget_topic(topic);
            }
            self.schedule_retry(src, seq, Duration::ZERO);
            return;
        }
        let waits = self
            .topic_waits
            .wait(slot.waits_for.take(), topic, reason.clone(), unix_ms());
        slot.waits_for = Some(waits);
        let name = source.name.clone();
        self.stats
            .sink_failure("topic", &format!("topic {topic:?}: {reason}"));
        if let Some(suppressed) = self.limit.allow("topic_wait") {
            tracing::warn!(source = %name, topic, %reason, topics_waited_for = self.topic_waits.len(), suppressed,
                "Kafka topic cannot take entries; they wait in the in-flight window and are retried every second \
                 (create the topic, or set [sink] topic_fallback)");
        }
        self.schedule_retry(src, seq, TOPIC_RETRY);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_topic_is_waited_for_until_its_last_entry_is_done() {
        let mut w = TopicWaits::default();
        let a = w.wait(None, "logs.a", "unknown".into(), 100);
        let a2 = w.wait(None, "logs.a", "still unknown".into(), 200);
        let b = w.wait(None, "logs.b", "unknown".into(), 150);
        // The same entry failing again is not counted twice.
        let a = w.wait(Some(a), "logs.a", "unknown".into(), 300);
        let p = w.published();
        assert_eq!(p.len(), 2);
        assert_eq!(
            (p[0].topic.as_str(), p[0].since_ms, p[0].entries),
            ("logs.a", 100, 2)
        );
        assert_eq!(p[1].topic, "logs.b");
        w.done(&a);
        assert_eq!(w.published()[0].entries, 1);
        w.done(&a2);
        assert_eq!(w.published().len(), 1);
        // An entry that moves to another topic leaves the first.
        let c = w.wait(Some(b), "logs.c", "beyond max_topics".into(), 400);
        assert_eq!(w.len(), 1);
        w.done(&c);
        assert_eq!(w.len(), 0);
    }
}
