fn main() {
    eprintln!("s3-accel-bench: the load-testing harness is not built yet (issue: load-testing harness)");
    std::process::exit(2);
}
