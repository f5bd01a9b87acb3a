//! What a worker is doing: tracked by the daemon's heartbeats, reported by the metrics.

/// What a worker is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerState {
    /// Loading the models a job needs.
    Loading,
    /// Waiting for a job (or for a resume, or for storage).
    Idle,
    /// Running a job.
    Rendering,
    /// Its thread has ended.
    Stopped,
}

impl WorkerState {
    pub fn name(self) -> &'static str {
        match self {
            WorkerState::Loading => "loading",
            WorkerState::Idle => "idle",
            WorkerState::Rendering => "rendering",
            WorkerState::Stopped => "stopped",
        }
    }

    /// Whether a worker in this state must beat within the limit.
    pub fn must_beat(self) -> bool {
        matches!(self, WorkerState::Idle | WorkerState::Rendering)
    }
}

impl std::fmt::Display for WorkerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}
