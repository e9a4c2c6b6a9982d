use cascade_core::dag;

dag! {
    name: etl,
    tasks: {
        a: { run: |ctx| async move { Ok(ctx.params().clone()) } },
    }
}

fn main() {}
