use cascade_core::dag;

dag! {
    name: etl,
    tasks: {
        a: { run: "extract" },
    }
}

fn main() {}
