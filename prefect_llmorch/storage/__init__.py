"""What is kept on disk between runs: long plans passed by reference, learned costs, and the ledger of the global-concurrency leases this machine's processes hold."""
