//! `https://` webhooks against the real daemon: a receiver whose certificate is signed by a CA
//! named in `notify.ca_file` gets the events; one whose CA is not trusted is refused with a clear
//! logged error and retried like any failed delivery, and rendering does not wait for it. The
//! certificates are made here (rcgen), the receivers are rustls servers on 127.0.0.1.

mod common;

use common::served::Served;

use std::io::Write;
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Running, wait_for};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// A CA of its own and a server certificate for 127.0.0.1 it signed: (CA PEM, chain, key).
fn ca_and_server_cert(
    name: &str,
) -> (String, Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    (
        ca_cert.pem(),
        vec![cert.der().clone()],
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
    )
}

/// An HTTPS receiver on 127.0.0.1 answering 200: its port, the bodies it got, and how many
/// connections were made to it (TLS handshakes tried).
struct Receiver {
    port: u16,
    bodies: Arc<Mutex<Vec<String>>>,
    connections: Arc<AtomicUsize>,
}

fn https_receiver(chain: Vec<CertificateDer<'static>>, key: PrivateKeyDer<'static>) -> Receiver {
    let config = Arc::new(
        rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap(),
    );
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let connections = Arc::new(AtomicUsize::new(0));
    let (got, count) = (bodies.clone(), connections.clone());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            count.fetch_add(1, Ordering::SeqCst);
            let config = config.clone();
            let got = got.clone();
            std::thread::spawn(move || {
                stream
                    .set_read_timeout(Some(Duration::from_secs(5)))
                    .unwrap();
                let conn = rustls::ServerConnection::new(config).unwrap();
                let mut tls = rustls::StreamOwned::new(conn, stream);
                let Some(body) = common::read_request_body(&mut tls) else {
                    return;
                };
                got.lock().unwrap().push(body);
                let _ = tls.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                );
                let _ = tls.flush();
            });
        }
    });
    Receiver {
        port,
        bodies,
        connections,
    }
}

#[test]
fn https_webhooks_trust_notify_ca_file_and_refuse_unknown_certificates() {
    let (trusted_ca, chain, key) = ca_and_server_cert("sdspool test CA");
    let trusted = https_receiver(chain, key);
    let (_, chain, key) = ca_and_server_cert("some other CA");
    let untrusted = https_receiver(chain, key);
    let env = Served::create(2, |c| {
        c.webhooks = vec![
            format!("https://127.0.0.1:{}/hook", trusted.port),
            format!("https://127.0.0.1:{}/hook", untrusted.port),
        ];
        c.webhook_timeout_seconds = Some(5);
        c.webhook_retries = Some(1);
    });
    std::fs::write(env.root.join("ca.pem"), &trusted_ca).unwrap();
    let text = std::fs::read_to_string(&env.config)
        .unwrap()
        .replace("notify:\n", "notify:\n  ca_file: ca.pem\n");
    std::fs::write(&env.config, text).unwrap();

    let mut daemon = Running::spawn(
        Command::new(env!("CARGO_BIN_EXE_sdspool"))
            .arg("--config")
            .arg(&env.config)
            .arg("run")
            .env("SDSPOOL_LOG", "info")
            .stdout(Stdio::null()),
    );
    let started = Instant::now();
    let tmp = env.root.join(".cats.tmp");
    std::fs::write(&tmp, "prompts:\n  - a photo of a cat\nseed: 5\n").unwrap();
    std::fs::rename(&tmp, env.root.join("spool/incoming/cats.yaml")).unwrap();
    wait_for("cats in done/", Duration::from_secs(120), || {
        env.root.join("spool/done/cats.yaml").exists()
    });
    let rendered_in = started.elapsed();

    // The trusted receiver got the job and the queue's end over TLS.
    wait_for("the trusted receiver", Duration::from_secs(60), || {
        trusted.bodies.lock().unwrap().len() >= 2
    });
    let got = trusted.bodies.lock().unwrap().clone();
    let events: Vec<String> = got
        .iter()
        .map(|b| serde_json::from_str::<serde_json::Value>(b).unwrap()["event"].to_string())
        .collect();
    assert_eq!(events, ["\"job_done\"", "\"queue_empty\""]);
    // The untrusted one: every try reached it and none was delivered (2 events x (1 + 1 retry)).
    wait_for("the retries", Duration::from_secs(60), || {
        untrusted.connections.load(Ordering::SeqCst) >= 4
    });
    assert!(untrusted.bodies.lock().unwrap().is_empty());
    assert!(
        rendered_in < Duration::from_secs(100),
        "rendering waited: {rendered_in:?}"
    );
    // Stopped, its log says why.
    let _ = rustix_kill(&daemon);
    let _ = daemon.wait();
    let log = common::stderr_of(&mut daemon);
    assert!(
        log.contains("TLS certificate is not trusted") && log.contains("notify.ca_file"),
        "{log}"
    );
    assert!(log.contains("giving up on a notification"), "{log}");
}

/// SIGTERM to the daemon (it stops after delivering what is queued, bounded).
fn rustix_kill(daemon: &Running) -> std::io::Result<()> {
    let status = Command::new("kill")
        .arg("-TERM")
        .arg(daemon.id().to_string())
        .status()?;
    assert!(status.success());
    Ok(())
}
