module billiard/go-example

go 1.19
