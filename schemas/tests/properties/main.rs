//! Property tests: every input the grammars accept round-trips through every form,
//! and no input, however malformed, makes a parser panic.

mod channels;
mod envelope;
mod frames;
mod strategies;
mod timestamps;
