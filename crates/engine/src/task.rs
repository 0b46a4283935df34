//! Small helpers around tokio tasks.

/// A task aborted when its handle is dropped: a helper that lives exactly as long as its owner.
/// Its result, when it has one, is awaited through the handle (`&mut self.0`).
#[derive(Debug)]
pub struct AbortOnDrop<T = ()>(pub tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}
