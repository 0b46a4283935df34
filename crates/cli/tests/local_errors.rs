//! Bad situations `stator up` refuses with a clear error, changing nothing.

mod local_support;

use local_support::Cluster;

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_port_in_use_is_named_with_its_instance_and_nothing_is_written() {
    let cluster = Cluster::new("pu", 3);
    let _held = std::net::TcpListener::bind(("127.0.0.1", cluster.server_port(1))).unwrap();
    let out = cluster.stator(&["up"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains(&format!(
            "port {} (pu-1's server) is already in use",
            cluster.server_port(1)
        )),
        "{err}"
    );
    assert!(!cluster.state_dir().exists(), "nothing written");
}

#[test]
fn missing_postgresql_binaries_say_how_to_install_them() {
    let cluster = Cluster::new("nb", 1);
    cluster.write_spec(1, "  version: \"17\"\n");
    let out = cluster.stator(&["up"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("PostgreSQL 17 binaries not found"), "{err}");
    assert!(err.contains("apt-get install postgresql-17"), "{err}");
    assert!(!cluster.state_dir().exists());
}

#[test]
fn an_invalid_spec_is_refused_with_the_field_and_exit_code_2() {
    let cluster = Cluster::new("iv", 1);
    cluster.write_spec(0, "");
    let out = cluster.stator(&["up"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("spec.instances"), "{}", stderr(&out));
    assert!(!cluster.state_dir().exists());
}

#[test]
fn a_data_dir_of_another_major_version_is_refused() {
    let cluster = Cluster::new("ov", 1);
    let data = cluster.db_dir().join("data-ov-0");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("PG_VERSION"), "14\n").unwrap();
    let out = cluster.stator(&["up"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("holds PostgreSQL 14 data"), "{err}");
    assert!(
        !cluster.db_dir().join("spec.json").exists(),
        "nothing written"
    );
    assert!(!cluster.db_dir().join("secrets").exists());
}

#[test]
fn a_data_dir_of_another_database_and_a_changed_version_are_refused() {
    let a = Cluster::new("ona", 1);
    let b = Cluster::new("onb", 1);
    a.up();
    b.up();
    a.ok(&["down"]);
    b.ok(&["down"]);
    // Put a's data dir where b's belongs.
    let b_data = b.db_dir().join("data-onb-0");
    std::fs::remove_dir_all(&b_data).unwrap();
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg(a.db_dir().join("data-ona-0"))
        .arg(&b_data)
        .status()
        .unwrap();
    assert!(status.success());
    let out = b.stator(&["up"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("belongs to"), "{}", stderr(&out));
    assert!(b.own_processes().is_empty(), "nothing started");

    // Changing what cannot change is refused before anything happens.
    a.write_spec(1, "  version: \"16\"\n");
    let spec_before = std::fs::read(a.db_dir().join("spec.json")).unwrap();
    let out = a.stator(&["up"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("spec.version: cannot change from \"15\" to \"16\""),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        std::fs::read(a.db_dir().join("spec.json")).unwrap(),
        spec_before
    );
}

/// A server that exits at start (here PostgreSQL preloading a library that does not exist, which
/// the parameter check cannot know) is reported by `up` at once with the server's own FATAL line,
/// instead of `up` waiting out its timeout.
#[test]
fn a_server_that_exits_at_start_is_quoted_at_once() {
    let cluster = Cluster::new("fatal", 1);
    cluster.write_spec(
        1,
        "  config:\n    parameters:\n      shared_preload_libraries: \"stator_no_such_library\"\n",
    );
    let out = cluster.stator(&["up", "--timeout", "120"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("fatal-0's server exits at start: FATAL:")
            && stderr.contains("stator_no_such_library"),
        "{stderr}"
    );
    cluster.ok(&["down"]);
}
