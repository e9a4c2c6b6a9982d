use cascade_core::{dag, TaskContext};

dag! {
    name: etl,
    tasks: {
        a: { run: |ctx: TaskContext| async move { Ok(ctx.params().clone()) } },
    }
}

fn main() {}
