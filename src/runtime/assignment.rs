//! Which execution provider each node of a session was assigned to.
//!
//! ONNX Runtime records this when the session option
//! `session.record_ep_graph_assignment_info` is `1`, and returns it through the C API
//! `Session_GetEpGraphAssignmentInfo` (API 24 and later), for which `ort` has no safe wrapper yet.
//! This is the truth about where a model runs: a CUDA provider that registered fine may still
//! leave nodes on the CPU.

use std::collections::BTreeMap;
use std::ffi::{CStr, c_char};

use ort::AsPointer;
use ort::session::Session;
use ort::sys::{OrtEpAssignedNode, OrtEpAssignedSubgraph, OrtStatusPtr};

/// Session config key that turns the recording on.
pub const RECORD_KEY: &str = "session.record_ep_graph_assignment_info";

/// Nodes per provider, by ONNX Runtime's provider name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Assignment {
    pub nodes_per_provider: BTreeMap<String, usize>,
}

impl Assignment {
    /// The provider with the most nodes, the one that "serves" the model.
    pub fn main_provider(&self) -> Option<&str> {
        self.nodes_per_provider
            .iter()
            .max_by_key(|(name, n)| (**n, std::cmp::Reverse(name.as_str())))
            .map(|(name, _)| name.as_str())
    }

    pub fn total_nodes(&self) -> usize {
        self.nodes_per_provider.values().sum()
    }

    /// E.g. `CUDAExecutionProvider 312 nodes, CPUExecutionProvider 4 nodes`.
    pub fn summary(&self) -> String {
        let mut parts: Vec<(&String, &usize)> = self.nodes_per_provider.iter().collect();
        parts.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        parts
            .iter()
            .map(|(name, n)| format!("{name} {n} nodes"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// ONNX Runtime could not report which provider runs which node; its message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct AssignmentError(pub String);

fn check(status: OrtStatusPtr) -> Result<(), AssignmentError> {
    if status.0.is_null() {
        return Ok(());
    }
    let api = ort::api();
    // SAFETY: a non-null status from the C API; its message lives until ReleaseStatus.
    let message = unsafe {
        let msg = (api.GetErrorMessage)(status.0);
        let text = if msg.is_null() {
            "unknown error".to_string()
        } else {
            CStr::from_ptr(msg).to_string_lossy().into_owned()
        };
        (api.ReleaseStatus)(status.0);
        text
    };
    Err(AssignmentError(message))
}

fn string(ptr: *const c_char) -> String {
    if ptr.is_null() {
        return String::new();
    }
    // SAFETY: ONNX Runtime returns NUL-terminated strings owned by the session.
    unsafe { CStr::from_ptr(ptr) }
        .to_string_lossy()
        .into_owned()
}

/// Reads the assignment of a session built with [`RECORD_KEY`] set to `1`.
pub fn read(session: &Session) -> Result<Assignment, AssignmentError> {
    let api = ort::api();
    let mut subgraphs: *const *const OrtEpAssignedSubgraph = std::ptr::null();
    let mut n_subgraphs: usize = 0;
    // SAFETY: the session pointer is valid for the borrow; the returned arrays are owned by the
    // session and stay valid while it lives, which outlasts this function.
    unsafe {
        check((api.Session_GetEpGraphAssignmentInfo)(
            session.ptr(),
            &mut subgraphs,
            &mut n_subgraphs,
        ))?;
    }
    let mut out = Assignment::default();
    for i in 0..n_subgraphs {
        // SAFETY: i < n_subgraphs, array provided by ONNX Runtime.
        let sub = unsafe { *subgraphs.add(i) };
        let mut name: *const c_char = std::ptr::null();
        let mut nodes: *const *const OrtEpAssignedNode = std::ptr::null();
        let mut n_nodes: usize = 0;
        unsafe {
            check((api.EpAssignedSubgraph_GetEpName)(sub, &mut name))?;
            check((api.EpAssignedSubgraph_GetNodes)(
                sub,
                &mut nodes,
                &mut n_nodes,
            ))?;
        }
        *out.nodes_per_provider.entry(string(name)).or_default() += n_nodes;
    }
    Ok(out)
}
