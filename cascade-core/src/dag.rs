//! [`Dag`]: a validated DAG plus the Rust functions that run its tasks.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::Arc;

use cascade_ir::{IrError, TaskKind, ValidDag};

use crate::task::{BoxFuture, CallbackContext, CallbackResult, TaskContext, TaskResult};

/// A task handler as stored in a handler table.
pub type Handler = Arc<dyn Fn(TaskContext) -> BoxFuture<TaskResult> + Send + Sync>;

/// A callback as stored in a callback table.
pub type Callback = Arc<dyn Fn(CallbackContext) -> BoxFuture<CallbackResult> + Send + Sync>;

/// A handler as the `dag!` macro bakes it: a plain function pointer.
pub type HandlerFn = fn(TaskContext) -> BoxFuture<TaskResult>;

/// A callback as the `dag!` macro bakes it: a plain function pointer.
pub type CallbackFn = fn(CallbackContext) -> BoxFuture<CallbackResult>;

/// A validated DAG and its handler table: what [`Cascade::register_dag`]
/// takes.
///
/// Made by a function that `dag!` generates, or from JSON IR with
/// [`Dag::from_ir_json`] plus [`Dag::with_handler`] for each handler name the IR
/// uses.
///
/// [`Cascade::register_dag`]: crate::Cascade::register_dag
#[derive(Clone)]
pub struct Dag {
    /// The IR baked by `dag!`; a DAG parsed at runtime uses the plan's copy.
    baked_ir: Option<&'static str>,
    plan: Arc<ValidDag>,
    handlers: HashMap<String, Handler>,
    callbacks: HashMap<String, Callback>,
}

impl Dag {
    /// Parses and validates JSON IR. The DAG has no handlers yet: add one per
    /// handler name with [`Dag::with_handler`].
    ///
    /// ```
    /// use cascade_core::{Dag, TaskContext, TaskResult};
    ///
    /// async fn hello(_ctx: TaskContext) -> TaskResult {
    ///     Ok(serde_json::json!("hello"))
    /// }
    ///
    /// let dag = Dag::from_ir_json(r#"{"ir_version":1,"name":"hello","tasks":[{"id":"hi","handler":"hello"}]}"#)?
    ///     .with_handler("hello", hello);
    /// assert!(dag.missing_handlers().is_empty());
    /// # Ok::<(), cascade_core::IrError>(())
    /// ```
    pub fn from_ir_json(json: &str) -> Result<Self, IrError> {
        let plan = ValidDag::from_json(json)?;
        Ok(Dag {
            baked_ir: None,
            plan: Arc::new(plan),
            handlers: HashMap::new(),
            callbacks: HashMap::new(),
        })
    }

    /// Binds a handler name used by the IR to an async function.
    pub fn with_handler<F, Fut>(mut self, name: impl Into<String>, handler: F) -> Self
    where
        F: Fn(TaskContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = TaskResult> + Send + 'static,
    {
        self.handlers
            .insert(name.into(), Arc::new(move |ctx| Box::pin(handler(ctx))));
        self
    }

    /// Binds a callback name used by the IR to an async function.
    pub fn with_callback<F, Fut>(mut self, name: impl Into<String>, callback: F) -> Self
    where
        F: Fn(CallbackContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = CallbackResult> + Send + 'static,
    {
        self.callbacks
            .insert(name.into(), Arc::new(move |ctx| Box::pin(callback(ctx))));
        self
    }

    /// The canonical JSON IR. For a DAG made by `dag!` it is the `&'static
    /// str` baked at compile time.
    pub fn ir_json(&self) -> &str {
        self.baked_ir.unwrap_or_else(|| self.plan.ir_json())
    }

    /// The DAG's name.
    pub fn name(&self) -> &str {
        self.plan.name()
    }

    /// The content hash that versions the DAG.
    pub fn hash(&self) -> &str {
        self.plan.hash()
    }

    /// The validated plan: tasks, dependencies, order.
    pub fn plan(&self) -> &ValidDag {
        &self.plan
    }

    /// The plan, shared.
    pub(crate) fn plan_arc(&self) -> Arc<ValidDag> {
        Arc::clone(&self.plan)
    }

    /// The handler bound to a name.
    pub fn handler(&self, name: &str) -> Option<&Handler> {
        self.handlers.get(name)
    }

    /// The callback bound to a name.
    pub fn callback(&self, name: &str) -> Option<&Callback> {
        self.callbacks.get(name)
    }

    /// Handler and callback names the IR uses that have no function bound.
    pub fn missing_handlers(&self) -> Vec<String> {
        let mut missing = Vec::new();
        for task in self.plan.tasks() {
            if let TaskKind::Local { handler } = &task.kind
                && !self.handlers.contains_key(handler)
                && !missing.contains(handler)
            {
                missing.push(handler.clone());
            }
            for name in [&task.on_failure, &task.on_success, &task.on_retry]
                .into_iter()
                .flatten()
            {
                if !self.callbacks.contains_key(name) && !missing.contains(name) {
                    missing.push(name.clone());
                }
            }
        }
        let ir = self.plan.ir();
        for name in [&ir.on_failure, &ir.on_success].into_iter().flatten() {
            if !self.callbacks.contains_key(name) && !missing.contains(name) {
                missing.push(name.clone());
            }
        }
        missing
    }
}

impl fmt::Debug for Dag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut handlers: Vec<&String> = self.handlers.keys().collect();
        handlers.sort();
        f.debug_struct("Dag")
            .field("name", &self.name())
            .field("hash", &self.hash())
            .field("tasks", &self.plan.tasks().len())
            .field("handlers", &handlers)
            .finish_non_exhaustive()
    }
}

/// Items the code generated by `dag!` uses. Not public API.
#[doc(hidden)]
pub mod __private {
    use std::collections::HashMap;
    use std::future::Future;
    use std::sync::Arc;

    use cascade_ir::ValidDag;

    use super::Dag;
    pub use super::{CallbackFn, HandlerFn};
    pub use crate::task::{BoxFuture, CallbackContext, CallbackResult, TaskContext, TaskResult};

    /// Calls a handler and boxes its future; rustc checks the handler's
    /// signature here, at the span of the `run:` path.
    pub fn call_handler<F, Fut>(handler: F, ctx: TaskContext) -> BoxFuture<TaskResult>
    where
        F: FnOnce(TaskContext) -> Fut,
        Fut: Future<Output = TaskResult> + Send + 'static,
    {
        Box::pin(handler(ctx))
    }

    /// Calls a callback and boxes its future; rustc checks its signature here.
    pub fn call_callback<F, Fut>(callback: F, ctx: CallbackContext) -> BoxFuture<CallbackResult>
    where
        F: FnOnce(CallbackContext) -> Fut,
        Fut: Future<Output = CallbackResult> + Send + 'static,
    {
        Box::pin(callback(ctx))
    }

    /// Builds a [`Dag`] from the IR and tables that `dag!` baked.
    pub fn dag_from_macro(
        ir_json: &'static str,
        handlers: &'static [(&'static str, HandlerFn)],
        callbacks: &'static [(&'static str, CallbackFn)],
    ) -> Dag {
        let plan = ValidDag::from_json(ir_json)
            .expect("BUG: dag! validated this IR at compile time with the same validator");
        let handlers = handlers
            .iter()
            .map(|&(name, f)| (name.to_owned(), Arc::new(f) as super::Handler))
            .collect::<HashMap<_, _>>();
        let callbacks = callbacks
            .iter()
            .map(|&(name, f)| (name.to_owned(), Arc::new(f) as super::Callback))
            .collect::<HashMap<_, _>>();
        Dag {
            baked_ir: Some(ir_json),
            plan: Arc::new(plan),
            handlers,
            callbacks,
        }
    }
}
