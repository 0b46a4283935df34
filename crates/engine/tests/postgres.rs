//! PostgreSQL behind the engine trait, with the real binaries: a primary's life from an empty
//! directory, and the refusals that must change nothing.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use stator_api::Role;
use stator_api::instance::{Bootstrap, InstanceConfig};
use stator_api::names::secret_keys;
use stator_engine::{Credentials, DataDirState, Postgres, ServerEngine, ServerProcess};

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

/// A temp dir the postgres user can traverse, with secrets and an instance config.
fn setup(name: &str) -> (tempfile::TempDir, InstanceConfig) {
    let dir = tempfile::Builder::new()
        .prefix("stator-engine-")
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
        "apiVersion: stator.dev/v1alpha1\nkind: Database\nmetadata:\n  name: {name}\nspec:\n  engine: postgres\n  resources:\n    requests: {{cpu: 100m, memory: 128Mi}}\n    limits: {{cpu: '1', memory: 256Mi}}\n"
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
        server_user: Some("postgres".into()),
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

#[tokio::test]
async fn a_primary_is_initialized_over_a_leftover_started_observed_and_stopped() {
    let (_dir, config) = setup("eng");
    let pg = Postgres::new(&config).unwrap();
    let creds = Credentials::read(&config.secrets_dir).unwrap();
    assert_eq!(pg.inspect_data_dir().unwrap(), DataDirState::Empty);
    // What a manager killed during initdb leaves: a half-built staging directory.
    let leftover = config.data_dir.with_file_name(".data.stator-new");
    std::fs::create_dir_all(leftover.join("base")).unwrap();
    std::fs::write(leftover.join("PG_VERSION"), "15\n").unwrap();
    pg.initialize(&creds).await.unwrap();
    assert!(
        !leftover.exists(),
        "the staging directory was moved into place"
    );
    let DataDirState::Ready(marker) = pg.inspect_data_dir().unwrap() else {
        panic!("initialized data dir not recognized");
    };
    assert_eq!(marker.database, "eng");
    assert_eq!(marker.major_version, "15");
    assert!(marker.follows.is_none());
    assert!(
        !config.run_dir.join("initdb.pw").exists(),
        "the initdb password file is removed"
    );
    pg.write_config(&creds).unwrap();
    let mut guard = Running(Some(pg.start().unwrap()));
    let mut ready = false;
    for _ in 0..300 {
        if pg.probe(&creds).await.is_ok() {
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
    assert!(pg.start().is_err(), "a second postmaster is refused");
    let found = pg
        .find_running()
        .unwrap()
        .expect("the running server is found");
    assert_eq!(found.pid(), guard.0.as_ref().unwrap().pid());

    pg.ensure_users(&creds).await.unwrap();
    pg.ensure_users(&creds).await.unwrap();
    let o = pg.observe(&creds).await.unwrap();
    assert_eq!(o.role, Some(Role::Primary));
    assert_eq!(o.timeline, Some(1));
    let pos = pg
        .parse_position(o.position.as_deref().unwrap(), o.timeline)
        .unwrap();
    let earlier = pg.parse_position("0/1000000", Some(1)).unwrap();
    assert_eq!(
        pg.compare_positions(&pos, &earlier),
        Some(std::cmp::Ordering::Greater)
    );

    let mut server = guard.0.take().unwrap();
    let how = pg.stop(&mut server, Duration::from_secs(30)).await;
    assert!(how.contains("exit"), "{how}");
    assert!(pg.find_running().unwrap().is_none());
}

#[test]
fn a_data_dir_of_another_database_is_refused_and_unchanged() {
    let (_dir, config) = setup("ours");
    std::fs::create_dir_all(&config.data_dir).unwrap();
    std::fs::write(config.data_dir.join("PG_VERSION"), "15\n").unwrap();
    std::fs::write(
        config.data_dir.join("stator.json"),
        r#"{"engine":"postgres","majorVersion":"15","database":"theirs"}"#,
    )
    .unwrap();
    let before = listing(&config.data_dir);
    let pg = Postgres::new(&config).unwrap();
    let e = pg.inspect_data_dir().unwrap_err().to_string();
    assert!(e.contains("\"theirs\"") && e.contains("\"ours\""), "{e}");
    assert!(e.contains(&config.data_dir.display().to_string()), "{e}");
    assert_eq!(listing(&config.data_dir), before);
}

#[test]
fn a_foreign_postgres_data_dir_and_another_major_are_refused() {
    let (_dir, config) = setup("ours");
    std::fs::create_dir_all(&config.data_dir).unwrap();
    std::fs::write(config.data_dir.join("PG_VERSION"), "15\n").unwrap();
    let pg = Postgres::new(&config).unwrap();
    let e = pg.inspect_data_dir().unwrap_err().to_string();
    assert!(e.contains("did not create"), "{e}");

    std::fs::write(config.data_dir.join("PG_VERSION"), "14\n").unwrap();
    std::fs::write(
        config.data_dir.join("stator.json"),
        r#"{"engine":"postgres","majorVersion":"14","database":"ours"}"#,
    )
    .unwrap();
    let e = pg.inspect_data_dir().unwrap_err().to_string();
    assert!(e.contains("14") && e.contains("15"), "{e}");

    std::fs::remove_file(config.data_dir.join("PG_VERSION")).unwrap();
    std::fs::remove_file(config.data_dir.join("stator.json")).unwrap();
    std::fs::write(config.data_dir.join("ibdata1"), "").unwrap();
    let e = pg.inspect_data_dir().unwrap_err().to_string();
    assert!(e.contains("not a PostgreSQL data directory"), "{e}");
}

#[test]
fn missing_binaries_name_the_package_to_install() {
    let (dir, mut config) = setup("bins");
    config.bin_dir = Some(dir.path().join("nowhere"));
    let e = Postgres::new(&config).unwrap_err().to_string();
    assert!(e.contains("apt-get install postgresql-15"), "{e}");
}
