//! What `pg_controldata` says of a data directory: whether it was shut down cleanly and where
//! its last checkpoint is. A cleanly stopped primary's last checkpoint is its final position:
//! nothing was written after it, so a replica that has it has everything (the local runtime's
//! failover and the managed instance manager's `/status` both report it).

use std::path::Path;

/// The facts read from `pg_control`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ControlData {
    /// `Database cluster state: shut down` (a clean shutdown of a primary).
    pub clean: bool,
    /// `Latest checkpoint location`, an LSN such as `0/3000028`.
    pub lsn: String,
    /// `Latest checkpoint's TimeLineID`.
    pub timeline: u32,
}

/// Runs `pg_controldata` (from `bin_dir`, else PATH) on `data_dir`; `None` when it cannot run
/// or says something unexpected.
pub async fn read_control_data(bin_dir: Option<&Path>, data_dir: &Path) -> Option<ControlData> {
    let program = bin_dir
        .map(|b| b.join("pg_controldata"))
        .unwrap_or_else(|| "pg_controldata".into());
    let out = tokio::process::Command::new(program)
        .arg("-D")
        .arg(data_dir)
        .env("LC_ALL", "C")
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .ok()?;
    if !out.status.success() {
        return None;
    }
    parse_control_data(&String::from_utf8_lossy(&out.stdout))
}

/// Reads the three fields from `pg_controldata`'s output (in the C locale).
pub fn parse_control_data(text: &str) -> Option<ControlData> {
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_string())
    };
    Some(ControlData {
        clean: field("Database cluster state:")? == "shut down",
        lsn: field("Latest checkpoint location:")?,
        timeline: field("Latest checkpoint's TimeLineID:")?.parse().ok()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controldata_of_a_clean_shutdown_gives_the_final_checkpoint() {
        let text = "pg_control version number:            1300\n\
                    Database cluster state:               shut down\n\
                    Latest checkpoint location:           0/3000028\n\
                    Latest checkpoint's REDO location:    0/3000028\n\
                    Latest checkpoint's TimeLineID:       2\n";
        let c = parse_control_data(text).unwrap();
        assert!(c.clean);
        assert_eq!((c.lsn.as_str(), c.timeline), ("0/3000028", 2));
        let crashed = text.replace("shut down", "in production");
        assert!(!parse_control_data(&crashed).unwrap().clean);
        assert!(parse_control_data("garbage").is_none());
    }
}
