"""What is kept on disk between runs: long plans passed by reference, and learned costs."""
