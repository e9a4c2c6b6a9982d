use cascade_core::dag;

dag! {
    name: etl,
    tasks: {
        a: { run: crate::tasks::extract },
    }
}

fn main() {}
