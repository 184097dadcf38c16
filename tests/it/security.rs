//! Kafka security as operators deploy it: a SASL_SSL listener of Apache Kafka (a certificate
//! signed by a CA made for the test, SCRAM-SHA-512 and PLAIN users), and perapera configured
//! with the librdkafka settings a user writes in `[sink.librdkafka]`. A wrong password and an
//! untrusted certificate each give a clear, rate-limited error; nothing read meanwhile is lost.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::support::*;

const LINES: usize = 300;

/// A files source of `LINES` lines (written once) and a Kafka sink on the SASL_SSL listener.
fn config(dir: &Path, secure: &Secure, port: u16, security: &str) -> std::path::PathBuf {
    FilesToKafka {
        brokers: &secure.bootstrap,
        topic: "secure",
        port,
        metrics: "unhealthy_after = \"2s\"\n",
        librdkafka: &format!("\"security.protocol\" = \"SASL_SSL\"\n{security}"),
        ..FilesToKafka::default()
    }
    .write(dir)
}

fn write_lines(dir: &Path) {
    std::fs::create_dir_all(dir.join("logs")).unwrap();
    let text: String = (0..LINES).map(|i| format!("secret line {i}\n")).collect();
    std::fs::write(dir.join("logs/app.log"), text).unwrap();
}

/// Runs an agent that cannot get through for `seconds`: `/health` turns 503, the log says
/// `needle` (what is wrong and what to check) at most `max_lines` times, and nothing reaches
/// the topic. Returns the log.
fn refused(config: &Path, port: u16, kafka: &Kafka, needle: &str, max_lines: usize) -> String {
    let agent = Agent::start(config);
    wait_port(port, Duration::from_secs(30), "the metrics endpoint");
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some((503, _)) = http_get(port, "/health") {
            break;
        }
        assert!(
            Instant::now() < end,
            "/health never turned 503\n{}",
            agent.stderr()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Long enough for librdkafka to retry the connection many times.
    std::thread::sleep(Duration::from_secs(12));
    let stderr = agent.stop();
    let said = stderr.lines().filter(|l| l.contains(needle)).count();
    assert!(
        (1..=max_lines).contains(&said),
        "{needle:?} said {said} times (once, rate-limited, expected):\n{stderr}"
    );
    let mut reader = Reader::new(&kafka.bootstrap, "secure");
    reader.drain(Duration::from_secs(2));
    assert!(
        reader.messages.is_empty(),
        "something got through\n{stderr}"
    );
    stderr
}

/// Every line arrives once the configuration is right: nothing read while refused was lost.
fn ships_everything(config: &Path, kafka: &Kafka) {
    let agent = Agent::start(config);
    let mut reader = Reader::new(&kafka.bootstrap, "secure");
    reader.read_until(Duration::from_secs(60), |m| m.len() >= LINES);
    reader.drain(Duration::from_secs(1));
    let stderr = agent.stop();
    let got: std::collections::HashSet<Vec<u8>> =
        reader.messages.iter().map(Consumed::message).collect();
    let missing: Vec<usize> = (0..LINES)
        .filter(|i| !got.contains(format!("secret line {i}").as_bytes()))
        .collect();
    assert!(missing.is_empty(), "lost {missing:?}\n{stderr}");
}

/// `[sink.librdkafka]` lines for SASL `mechanism` as perapera's user with `password`,
/// trusting `ca`.
fn sasl(mechanism: &str, password: &str, ca: &Path) -> String {
    format!(
        "\"sasl.mechanisms\" = \"{mechanism}\"\n\"sasl.username\" = \"{SASL_USER}\"\n\
         \"sasl.password\" = \"{password}\"\n\"ssl.ca.location\" = \"{}\"\n",
        ca.display()
    )
}

/// Against a broker with a SASL_SSL listener: an agent with the `wrong` settings is refused
/// (the log says `needle` at most 3 times and names `setting`), then one with the `right`
/// settings ships every line read meanwhile.
fn refused_then_shipped(
    wrong: impl Fn(&Secure) -> String,
    right: impl Fn(&Secure) -> String,
    needle: &str,
    setting: &str,
) {
    let kafka = Kafka::single_secure();
    kafka.create_topic("secure", 1);
    let secure = kafka.secure.as_ref().unwrap();
    let dir = tempfile::tempdir().unwrap();
    write_lines(dir.path());
    let port = free_port();
    let refused_config = config(dir.path(), secure, port, &wrong(secure));
    let stderr = refused(&refused_config, port, &kafka, needle, 3);
    assert!(stderr.contains(setting), "{stderr}");
    ships_everything(&config(dir.path(), secure, port, &right(secure)), &kafka);
}

#[test]
fn sasl_ssl_with_scram_ships_and_a_wrong_password_is_one_clear_error_losing_nothing() {
    refused_then_shipped(
        |s| sasl("SCRAM-SHA-512", "not-the-password", &s.ca),
        |s| sasl("SCRAM-SHA-512", SASL_PASSWORD, &s.ca),
        "refused perapera's credentials",
        "sasl.password",
    );
}

#[test]
fn sasl_ssl_with_plain_ships_and_an_untrusted_certificate_is_one_clear_error_losing_nothing() {
    refused_then_shipped(
        |s| sasl("PLAIN", SASL_PASSWORD, &s.other_ca),
        |s| sasl("PLAIN", SASL_PASSWORD, &s.ca),
        "TLS with the broker failed",
        "ssl.ca.location",
    );
}
