fn main() {
    println!("holistream");
}
