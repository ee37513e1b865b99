//! `roxyctl`, the lab's command-line tool: the private keys it writes are
//! readable by their owner only.
#![cfg(unix)]

use std::{os::unix::fs::PermissionsExt, path::Path, process::Command};

use rstest::rstest;
use tempfile::TempDir;

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

fn write_file(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[rstest]
#[case::fresh_directory(false)]
#[case::over_world_readable_keys(true)]
fn roxyctl_certs_writes_private_keys_for_their_owner_only(#[case] keys_existed: bool) {
    let dir = TempDir::new().unwrap();
    let keys = ["manager.key", "agent.key"];
    if keys_existed {
        for key in keys {
            let path = write_file(dir.path(), key, "old key\n");
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
    }
    let out = Command::new(env!("CARGO_BIN_EXE_roxyctl"))
        .arg("certs")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "roxyctl certs: {out:?}");
    for key in keys {
        let path = dir.path().join(key);
        assert_eq!(mode(&path), 0o600, "{key}");
        assert!(
            std::fs::read_to_string(&path)
                .unwrap()
                .starts_with("-----BEGIN PRIVATE KEY-----"),
            "{key} holds the new key"
        );
    }
}

/// An agent, played by the test, for `roxyctl send` and `roxyctl refuse`.
mod manager_modes {
    use std::{
        net::{Ipv4Addr, SocketAddr},
        path::Path,
        process::Stdio,
        sync::Arc,
        time::Duration,
    };

    use roxyd_lab::{
        SERVER_NAME,
        pki::{PkiFiles, ThrowawayPki},
    };
    use roxyd_proto::wire::{self, AgentInfo, HandshakeReply, Status};
    use tempfile::TempDir;
    use tokio::{
        io::{AsyncBufReadExt, BufReader},
        process::{Child, Command},
    };

    /// Longer than any step here takes; shorter than nextest's limit.
    const LIMIT: Duration = Duration::from_secs(30);

    async fn within<T>(rule: &str, future: impl Future<Output = T>) -> T {
        tokio::time::timeout(LIMIT, future)
            .await
            .unwrap_or_else(|_| panic!("{rule}: nothing within {LIMIT:?}"))
    }

    /// Starts roxyctl `mode` on a free port with the lab's files, and
    /// returns it with the address it listens on.
    async fn roxyctl(files: &PkiFiles, mode: &str, extra: &[&str]) -> (Child, SocketAddr) {
        let arg = |p: &Path| p.to_str().unwrap().to_owned();
        let mut child = Command::new(env!("CARGO_BIN_EXE_roxyctl"))
            .arg(mode)
            .args(["--listen", "127.0.0.1:0", "--timeout", "30"])
            .args(["--cert", &arg(&files.manager_cert)])
            .args(["--key", &arg(&files.manager_key)])
            .args(["--ca-certs", &arg(&files.ca_cert)])
            .args(extra)
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let first = within("roxyctl says where it listens", lines.next_line())
            .await
            .unwrap()
            .expect("a line from roxyctl");
        let addr = first
            .strip_prefix("roxyctl: waiting for an agent on ")
            .unwrap_or_else(|| panic!("{first}"))
            .parse()
            .unwrap();
        // The rest of its output is read at its exit.
        child.stdout = Some(lines.into_inner().into_inner());
        (child, addr)
    }

    /// Connects as the agent and runs the handshake, announcing
    /// `protocol_version`; returns the connection and the Manager's answer.
    async fn connect(
        pki: &ThrowawayPki,
        addr: SocketAddr,
        protocol_version: &str,
    ) -> (quinn::Connection, HandshakeReply, quinn::Endpoint) {
        let tls = rustls::ClientConfig::builder_with_provider(roxyd_proto::tls::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(pki.roots().unwrap())
            .with_client_auth_cert(pki.agent.chain(), pki.agent.key())
            .unwrap();
        let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
        let mut endpoint =
            quinn::Endpoint::client(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).unwrap();
        endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(quic)));
        let connection = within(
            "the agent connects to roxyctl",
            endpoint.connect(addr, SERVER_NAME).unwrap(),
        )
        .await
        .unwrap();
        let (mut send, mut recv) = connection.open_bi().await.unwrap();
        let info = AgentInfo {
            app_name: "roxy".to_owned(),
            version: "0.0.0-test".to_owned(),
            protocol_version: protocol_version.to_owned(),
            addr: SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
            status: Status::Ready,
        };
        wire::write_frame(&mut send, &wire::encode(&info))
            .await
            .unwrap();
        send.finish().unwrap();
        let answer = within(
            "roxyctl answers the handshake",
            wire::FrameReader::new(&mut recv).read_frame(1024),
        )
        .await
        .unwrap()
        .expect("an answer");
        (connection, wire::decode(&answer).unwrap(), endpoint)
    }

    async fn exit(child: Child) -> (Option<i32>, String) {
        let out = within("roxyctl exits", child.wait_with_output())
            .await
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    }

    /// `roxyctl send --code N --body HEX` sends exactly that payload, and
    /// prints the reply, `Err` text included, with its exit status.
    #[rstest::rstest]
    #[case::unknown_code_err_reply(
        9999,
        "00ff",
        wire::encode(&Err::<(), &str>("unknown request code: 9999")),
        1,
        "Err(\"unknown request code: 9999\")"
    )]
    #[case::empty_body_ok_reply(17, "", wire::encode(&Ok::<(), String>(())), 0, "Ok [00]")]
    #[tokio::test]
    async fn roxyctl_sends_a_raw_code_and_body(
        #[case] code: u32,
        #[case] body: &str,
        #[case] reply: Vec<u8>,
        #[case] status: i32,
        #[case] printed: &str,
    ) {
        let dir = TempDir::new().unwrap();
        let pki = ThrowawayPki::generate(SERVER_NAME).unwrap();
        let files = pki.write_to(dir.path()).unwrap();
        let (child, addr) = roxyctl(
            &files,
            "send",
            &["--code", &code.to_string(), "--body", body],
        )
        .await;
        let (connection, answer, _endpoint) = connect(&pki, addr, "0.47.0").await;
        assert!(answer.is_ok(), "{answer:?}");
        let (mut send, mut recv) = within("roxyctl sends its request", connection.accept_bi())
            .await
            .unwrap();
        let request = within(
            "the request frame",
            wire::FrameReader::new(&mut recv).read_frame(1024),
        )
        .await
        .unwrap()
        .expect("a request frame")
        .to_vec();
        let body_bytes: Vec<u8> = (0..body.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&body[i..i + 2], 16).unwrap())
            .collect();
        assert_eq!(request, wire::encode_request(code, &body_bytes));
        wire::write_frame(&mut send, &reply).await.unwrap();
        send.finish().unwrap();
        let (code, out) = exit(child).await;
        assert_eq!(code, Some(status), "{out}");
        assert!(out.contains(printed), "{out}");
    }

    /// `roxyctl refuse` answers the handshake with the requirement the
    /// agent's version does not meet, and exits 0 once it refused one.
    #[tokio::test]
    async fn roxyctl_plays_a_manager_that_refuses_the_agents_version() {
        let dir = TempDir::new().unwrap();
        let pki = ThrowawayPki::generate(SERVER_NAME).unwrap();
        let files = pki.write_to(dir.path()).unwrap();
        let (child, addr) = roxyctl(&files, "refuse", &["--require", ">=99.0.0"]).await;
        let (_connection, answer, _endpoint) = connect(&pki, addr, "0.47.0").await;
        assert_eq!(answer, Err(">=99.0.0".to_owned()));
        let (code, out) = exit(child).await;
        assert_eq!(code, Some(0), "{out}");
        assert!(out.contains("refused"), "{out}");
    }
}
