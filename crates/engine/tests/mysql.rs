//! MySQL 8 behind the engine trait, with a real `mysqld` 8 when one is on PATH (or in
//! `STATOR_MYSQL_BIN_DIR`). No MySQL 8 can be installed where Stator is developed (Debian's
//! `mysqld` is MariaDB's): the test then prints a visible "skipped" line and passes; the
//! flavor's configuration and statements are unit-tested in `src/mysql`.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::Duration;

use stator_api::Role;
use stator_api::instance::{Bootstrap, InstanceConfig};
use stator_api::names::secret_keys;
use stator_engine::{Credentials, DataDirState, MysqlFamily, ServerEngine, ServerProcess};

/// The directory of a MySQL 8 `mysqld`, if there is one.
fn mysql8_bin_dir() -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("STATOR_MYSQL_BIN_DIR")
        .map(|d| vec![PathBuf::from(d)])
        .unwrap_or_default();
    if let Some(path) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&path));
    }
    dirs.into_iter().find(|d| {
        std::process::Command::new(d.join("mysqld"))
            .arg("--version")
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .is_some_and(|v| v.contains("Ver 8.") && !v.contains("MariaDB"))
    })
}

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

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test]
async fn a_mysql8_primary_is_initialized_started_given_users_and_observed() {
    let Some(bin_dir) = mysql8_bin_dir() else {
        eprintln!(
            "skipped: no MySQL 8 mysqld on PATH or in STATOR_MYSQL_BIN_DIR (Debian's mysqld is MariaDB)"
        );
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    let secrets = dir.path().join("secrets");
    std::fs::create_dir(&secrets).unwrap();
    for key in secret_keys::ALL {
        let p = secrets.join(key);
        std::fs::write(&p, format!("pw-{key}-{}", std::process::id())).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let yaml = "apiVersion: stator.dev/v1alpha1\nkind: Database\nmetadata:\n  name: my8\nspec:\n  engine: mysql\n  resources:\n    limits: {cpu: '1', memory: 256Mi}\n";
    let database = stator_api::load_database(yaml).unwrap().database;
    let root = nix::unistd::Uid::effective().is_root();
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
        server_user: root.then(|| "mysql".to_string()),
        bin_dir: Some(bin_dir),
        peers: Vec::new(),
        tls_dir: None,
    };
    let db = MysqlFamily::new(&config).unwrap();
    let creds = Credentials::read(&config.secrets_dir).unwrap();
    db.initialize(&creds).await.unwrap();
    assert!(matches!(
        db.inspect_data_dir().unwrap(),
        DataDirState::Ready(_)
    ));
    db.write_config(&creds).unwrap();
    let _guard = Running(Some(db.start().unwrap()));
    let mut up = false;
    for _ in 0..600 {
        if db.probe(&creds).await.is_ok() {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        up,
        "{}",
        std::fs::read_to_string(&config.log_file).unwrap_or_default()
    );
    db.ensure_users(&creds).await.unwrap();
    let o = db.observe(&creds).await.unwrap();
    assert_eq!(o.role, Some(Role::Primary));
    assert!(
        o.server_version.as_deref().unwrap().starts_with("8."),
        "{o:?}"
    );
}
