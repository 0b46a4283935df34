//! MariaDB behind the engine trait, with the real server (Debian's mariadb-server 10.11): a
//! primary's life from an empty directory, its users, and the refusals that change nothing.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use mysql_async::prelude::Queryable;
use stator_api::Role;
use stator_api::instance::{Bootstrap, InstanceConfig};
use stator_api::names::secret_keys;
use stator_engine::{Credentials, DataDirState, MysqlFamily, ServerEngine, ServerProcess};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn random_hex() -> String {
    use std::io::Read;
    let mut buf = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut buf)
        .unwrap();
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

/// A temp dir the mysql user can traverse, with secrets and an instance config.
fn setup(name: &str) -> (tempfile::TempDir, InstanceConfig) {
    let dir = tempfile::Builder::new()
        .prefix("stator-maria-")
        .tempdir()
        .unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    let secrets = dir.path().join("secrets");
    std::fs::create_dir(&secrets).unwrap();
    for key in secret_keys::ALL {
        let p = secrets.join(key);
        std::fs::write(&p, random_hex()).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let yaml = format!(
        "apiVersion: stator.dev/v1alpha1\nkind: Database\nmetadata:\n  name: {name}\nspec:\n  engine: mariadb\n  bootstrap:\n    database: shop\n    owner: shopper\n  resources:\n    requests: {{cpu: 100m, memory: 128Mi}}\n    limits: {{cpu: '1', memory: 256Mi}}\n"
    );
    let database = stator_api::load_database(&yaml).unwrap().database;
    let config = InstanceConfig {
        database,
        ordinal: 0,
        data_dir: dir.path().join("data"),
        run_dir: dir.path().join("run"),
        secrets_dir: secrets,
        secrets_root: None,
        log_file: dir.path().join("server.log"),
        listen_address: "127.0.0.1".into(),
        port: free_port(),
        http_port: free_port(),
        bootstrap: Bootstrap::InitPrimary,
        server_user: Some("mysql".into()),
        bin_dir: None,
        peers: Vec::new(),
        tls_dir: None,
    };
    (dir, config)
}

/// Kills the server's process group if a test fails while it runs.
struct Running(Option<ServerProcess>);

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(p) = &self.0 {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(p.pid() as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

async fn tcp(
    port: u16,
    user: &str,
    password: &str,
) -> Result<mysql_async::Conn, mysql_async::Error> {
    let opts = mysql_async::OptsBuilder::default()
        .ip_or_hostname("127.0.0.1")
        .tcp_port(port)
        .user(Some(user))
        .pass(Some(password))
        .prefer_socket(false);
    mysql_async::Conn::new(opts).await
}

#[tokio::test]
async fn a_primary_is_initialized_started_given_users_observed_and_stopped() {
    let (_dir, config) = setup("maria");
    let db = MysqlFamily::new(&config).unwrap();
    let creds = Credentials::read(&config.secrets_dir).unwrap();
    assert_eq!(db.inspect_data_dir().unwrap(), DataDirState::Empty);
    // What a manager killed during mariadb-install-db leaves.
    let leftover = config.data_dir.with_file_name(".data.stator-new");
    std::fs::create_dir_all(leftover.join("mysql")).unwrap();
    db.initialize(&creds).await.unwrap();
    assert!(
        !leftover.exists(),
        "the staging directory was moved into place"
    );
    let DataDirState::Ready(marker) = db.inspect_data_dir().unwrap() else {
        panic!("initialized data dir not recognized");
    };
    assert_eq!(marker.engine, "mariadb");
    assert_eq!(marker.major_version, "10.11");
    assert!(marker.follows.is_none());

    db.write_config(&creds).unwrap();
    let options = config.run_dir.join("my.cnf");
    let mode = std::fs::metadata(&options).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let mut guard = Running(Some(db.start().unwrap()));
    let mut ready = false;
    for _ in 0..300 {
        if db.probe(&creds).await.is_ok() {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        ready,
        "{}",
        std::fs::read_to_string(&config.log_file).unwrap_or_default()
    );
    assert!(db.start().is_err(), "a second server is refused");
    let found = db
        .find_running()
        .unwrap()
        .expect("the running server is found");
    assert_eq!(found.pid(), guard.0.as_ref().unwrap().pid());
    let pid_file = std::fs::read_to_string(config.data_dir.join("mariadb.pid")).unwrap();
    assert_eq!(pid_file.trim(), found.pid().to_string());
    assert!(config.run_dir.join("mariadb.sock").exists());

    db.ensure_users(&creds).await.unwrap();
    db.ensure_users(&creds).await.unwrap();
    let o = db.observe(&creds).await.unwrap();
    assert_eq!(o.role, Some(Role::Primary));
    assert!(!o.read_only);
    assert!(
        o.server_version.as_deref().unwrap().starts_with("10.11"),
        "{o:?}"
    );
    assert!(o.errant.is_none());

    // The application user writes its database over TCP.
    let mut app = tcp(config.port, "shopper", creds.app.expose())
        .await
        .unwrap();
    app.query_drop("CREATE TABLE shop.t (id INT PRIMARY KEY, v TEXT)")
        .await
        .unwrap();
    app.query_drop("INSERT INTO shop.t VALUES (1, 'x')")
        .await
        .unwrap();
    let charset: Option<String> = app
        .query_first("SELECT @@character_set_server")
        .await
        .unwrap();
    assert_eq!(charset.as_deref(), Some("utf8mb4"));
    // ... and nothing else.
    assert!(app.query_drop("CREATE DATABASE other").await.is_err());
    drop(app);
    // Writes are in the binary log with GTIDs.
    let o = db.observe(&creds).await.unwrap();
    assert!(
        o.position.as_deref().unwrap().starts_with("0-1000-"),
        "{o:?}"
    );
    // root has no password login over TCP, not even with the superuser secret.
    assert!(
        tcp(config.port, "root", creds.superuser.expose())
            .await
            .is_err()
    );
    assert!(tcp(config.port, "root", "").await.is_err());
    // The monitoring user can read the replication state.
    let mut monitor = tcp(config.port, "stator_monitor", creds.monitor.expose())
        .await
        .unwrap();
    monitor.query_drop("SHOW SLAVE STATUS").await.unwrap();
    drop(monitor);

    // No secret in the option file.
    let text = std::fs::read_to_string(&options).unwrap();
    for secret in [
        &creds.app,
        &creds.replication,
        &creds.monitor,
        &creds.superuser,
    ] {
        assert!(!text.contains(secret.expose()));
    }

    let mut server = guard.0.take().unwrap();
    let how = db.stop(&mut server, Duration::from_secs(30)).await;
    assert!(how.contains("exit"), "{how}");
    assert!(db.find_running().unwrap().is_none());
}

#[test]
fn a_data_dir_of_another_database_or_engine_is_refused_and_unchanged() {
    let (_dir, config) = setup("ours");
    std::fs::create_dir_all(config.data_dir.join("mysql")).unwrap();
    std::fs::write(
        config.data_dir.join("stator.json"),
        r#"{"engine":"mariadb","majorVersion":"10.11","database":"theirs"}"#,
    )
    .unwrap();
    let before = listing(&config.data_dir);
    let db = MysqlFamily::new(&config).unwrap();
    let e = db.inspect_data_dir().unwrap_err().to_string();
    assert!(e.contains("\"theirs\"") && e.contains("\"ours\""), "{e}");
    assert_eq!(listing(&config.data_dir), before);

    std::fs::write(
        config.data_dir.join("stator.json"),
        r#"{"engine":"postgres","majorVersion":"15","database":"ours"}"#,
    )
    .unwrap();
    let e = db.inspect_data_dir().unwrap_err().to_string();
    assert!(e.contains("postgres"), "{e}");

    std::fs::remove_file(config.data_dir.join("stator.json")).unwrap();
    let e = db.inspect_data_dir().unwrap_err().to_string();
    assert!(e.contains("did not create"), "{e}");
}

#[test]
fn a_missing_server_binary_names_the_package() {
    let (dir, mut config) = setup("bins");
    config.bin_dir = Some(dir.path().join("nowhere"));
    let e = MysqlFamily::new(&config).unwrap_err().to_string();
    assert!(
        e.contains("mariadbd") && e.contains("mariadb-server"),
        "{e}"
    );
}

#[test]
fn a_version_the_binaries_do_not_run_is_refused() {
    let (_dir, mut config) = setup("vers");
    config.database.spec.version = Some("11.4".into());
    let e = MysqlFamily::new(&config).unwrap_err().to_string();
    assert!(
        e.contains("database.spec.version") && e.contains("11.4"),
        "{e}"
    );
}
