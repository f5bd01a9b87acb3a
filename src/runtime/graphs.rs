//! CUDA graphs and the bound buffers they replay.
//!
//! With `execution.cuda.cuda_graph`, the UNet's session is created with ONNX Runtime's
//! `enable_cuda_graph`; each set of bound buffers ([`super::binding::Bound`], one per set of
//! shapes: size and batch) gets its own graph id, passed as the run option `gpu_graph_id`.
//! ONNX Runtime captures the graph after its warm-up runs and replays it from then on, reading
//! and writing the same device addresses, which is why those buffers are never freed while the
//! session lives. Past `execution.cuda.max_graphs` shapes, or for a session that does not
//! capture graphs, runs go without a graph (`gpu_graph_id` -1, ONNX Runtime's "skip"), whose
//! buffers are kept only for the most recent shapes.

use std::fmt;

use super::binding::BindingSpec;

/// ONNX Runtime's run option that selects the CUDA graph of a run.
pub const GRAPH_ID_KEY: &str = "gpu_graph_id";

/// ONNX Runtime's graph id for "run without a graph".
pub const SKIP_GRAPH_ID: i32 = -1;

/// Buffers of shapes without a graph kept besides those with one: the shape now rendered and
/// the one before (a job alternating two batch sizes, e.g. 4 candidates then the last 1).
pub const KEEP_UNCAPTURED: usize = 2;

/// Whether runs with a set of buffers capture and replay a CUDA graph.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GraphChoice {
    /// Graph `id`: captured after ONNX Runtime's warm-up runs, then replayed.
    Graph(i32),
    /// No graph: the session does not capture CUDA graphs.
    Off,
    /// No graph: `max` shapes already have one.
    Full { max: usize },
}

impl GraphChoice {
    /// The value of the run option `gpu_graph_id`; none for a session without CUDA graphs.
    pub fn run_option(self) -> Option<i32> {
        match self {
            GraphChoice::Graph(id) => Some(id),
            GraphChoice::Full { .. } => Some(SKIP_GRAPH_ID),
            GraphChoice::Off => None,
        }
    }

    pub fn is_graph(self) -> bool {
        matches!(self, GraphChoice::Graph(_))
    }
}

impl fmt::Display for GraphChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GraphChoice::Graph(id) => write!(f, "CUDA graph {id}"),
            GraphChoice::Off => f.write_str("no CUDA graph"),
            GraphChoice::Full { max } => write!(
                f,
                "no CUDA graph (all {max} of `execution.cuda.max_graphs` are taken by other shapes)"
            ),
        }
    }
}

/// The graph ids of one session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GraphIds {
    /// Whether the session was created to capture CUDA graphs.
    pub enabled: bool,
    /// Most graphs (shapes) captured; later shapes run without one.
    pub max: usize,
    given: usize,
}

impl GraphIds {
    pub fn new(enabled: bool, max: usize) -> GraphIds {
        GraphIds {
            enabled,
            max,
            given: 0,
        }
    }

    /// The choice for a shape not seen before: the next graph id (from 1; 0 is ONNX Runtime's
    /// default id, left to runs that do not ask), or none.
    pub fn assign(&mut self) -> GraphChoice {
        if !self.enabled {
            return GraphChoice::Off;
        }
        if self.given >= self.max {
            return GraphChoice::Full { max: self.max };
        }
        self.given += 1;
        GraphChoice::Graph(self.given as i32)
    }
}

/// Bound buffers by shape, most recently used last: those with a graph for the session's
/// life, the others up to [`KEEP_UNCAPTURED`].
#[derive(Debug)]
pub struct BindingCache<B> {
    pub graphs: GraphIds,
    entries: Vec<(BindingSpec, GraphChoice, B)>,
}

impl<B> BindingCache<B> {
    pub fn new(graphs: GraphIds) -> BindingCache<B> {
        BindingCache {
            graphs,
            entries: Vec::new(),
        }
    }

    /// The buffers of `spec`: those made before, or new ones from `make` (given the graph choice
    /// for the new shape). `Ok((buffers, true))` when just made.
    pub fn get_or_make<E>(
        &mut self,
        spec: &BindingSpec,
        make: impl FnOnce(GraphChoice) -> Result<B, E>,
    ) -> Result<(&mut B, GraphChoice, bool), E> {
        if let Some(at) = self.entries.iter().position(|(s, _, _)| s == spec) {
            let entry = self.entries.remove(at);
            self.entries.push(entry);
            let (_, choice, b) = self.entries.last_mut().expect("just pushed");
            return Ok((b, *choice, false));
        }
        let mut graphs = self.graphs;
        let choice = graphs.assign();
        let made = make(choice)?;
        self.graphs = graphs;
        self.entries.push((spec.clone(), choice, made));
        self.evict();
        let (_, choice, b) = self.entries.last_mut().expect("just pushed");
        Ok((b, *choice, true))
    }

    /// The buffers of `spec`, if made.
    pub fn get(&mut self, spec: &BindingSpec) -> Option<(&mut B, GraphChoice)> {
        self.entries
            .iter_mut()
            .find(|(s, _, _)| s == spec)
            .map(|(_, c, b)| (b, *c))
    }

    /// Drops the least recently used buffers without a graph beyond [`KEEP_UNCAPTURED`].
    fn evict(&mut self) {
        while self
            .entries
            .iter()
            .filter(|(_, c, _)| !c.is_graph())
            .count()
            > KEEP_UNCAPTURED
        {
            let oldest = self
                .entries
                .iter()
                .position(|(_, c, _)| !c.is_graph())
                .expect("counted above");
            self.entries.remove(oldest);
        }
    }

    /// The shapes with buffers, least recently used first.
    pub fn shapes(&self) -> impl Iterator<Item = (&BindingSpec, GraphChoice)> {
        self.entries.iter().map(|(s, c, _)| (s, *c))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::binding::TensorSpec;
    use crate::runtime::signature::Elem;

    fn spec(batch: usize, side: usize) -> BindingSpec {
        BindingSpec {
            inputs: vec![TensorSpec::new(
                "sample",
                Elem::F32,
                &[batch, 4, side, side],
            )],
            outputs: vec![TensorSpec::new(
                "out_sample",
                Elem::F32,
                &[batch, 4, side, side],
            )],
        }
    }

    #[test]
    fn each_new_shape_gets_the_next_graph_id_until_the_limit_then_none() {
        let mut ids = GraphIds::new(true, 2);
        assert_eq!(ids.assign(), GraphChoice::Graph(1));
        assert_eq!(ids.assign(), GraphChoice::Graph(2));
        assert_eq!(ids.assign(), GraphChoice::Full { max: 2 });
        assert_eq!(GraphChoice::Graph(2).run_option(), Some(2));
        assert_eq!(GraphChoice::Full { max: 2 }.run_option(), Some(-1));
        let mut off = GraphIds::new(false, 8);
        assert_eq!(off.assign(), GraphChoice::Off);
        assert_eq!(GraphChoice::Off.run_option(), None, "no run option at all");
    }

    #[test]
    fn a_shape_seen_before_keeps_its_buffers_and_graph() {
        let mut cache = BindingCache::new(GraphIds::new(true, 2));
        let mut made = 0;
        let mut get = |cache: &mut BindingCache<usize>, s: &BindingSpec| {
            let (b, choice, _) = cache
                .get_or_make(s, |_| {
                    made += 1;
                    Ok::<_, ()>(made)
                })
                .unwrap();
            (*b, choice)
        };
        assert_eq!(get(&mut cache, &spec(2, 64)), (1, GraphChoice::Graph(1)));
        assert_eq!(get(&mut cache, &spec(8, 64)), (2, GraphChoice::Graph(2)));
        assert_eq!(get(&mut cache, &spec(2, 64)), (1, GraphChoice::Graph(1)));
        // A third shape falls back to no graph, and keeps its buffers while used.
        let full = GraphChoice::Full { max: 2 };
        assert_eq!(get(&mut cache, &spec(2, 96)), (3, full));
        assert_eq!(get(&mut cache, &spec(2, 96)), (3, full));
        assert_eq!(get(&mut cache, &spec(8, 64)), (2, GraphChoice::Graph(2)));
    }

    #[test]
    fn buffers_without_a_graph_are_evicted_oldest_first_and_graph_buffers_never() {
        let mut cache = BindingCache::new(GraphIds::new(true, 1));
        for (i, side) in [64, 72, 80, 88].into_iter().enumerate() {
            cache
                .get_or_make(&spec(2, side), |_| Ok::<_, ()>(i))
                .unwrap();
        }
        let kept: Vec<(usize, GraphChoice)> = cache
            .shapes()
            .map(|(s, c)| (s.inputs[0].shape[2], c))
            .collect();
        let full = GraphChoice::Full { max: 1 };
        assert_eq!(
            kept,
            [(64, GraphChoice::Graph(1)), (80, full), (88, full)],
            "the graph's buffers stay; of the others the two most recent"
        );
        assert!(cache.get(&spec(2, 72)).is_none());
    }

    #[test]
    fn a_failed_allocation_uses_no_graph_id() {
        let mut cache = BindingCache::<usize>::new(GraphIds::new(true, 1));
        assert!(
            cache
                .get_or_make(&spec(2, 64), |_| Err("out of memory"))
                .is_err()
        );
        let (_, choice, made) = cache.get_or_make(&spec(2, 64), |_| Ok::<_, ()>(1)).unwrap();
        assert_eq!((choice, made), (GraphChoice::Graph(1), true));
    }
}
