//! Small helpers around tokio tasks.

/// A task aborted when its handle is dropped: a helper that lives exactly as long as its owner.
#[derive(Debug)]
pub struct AbortOnDrop(pub tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
