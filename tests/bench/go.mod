module ssekeeper.dev/bench

go 1.24
