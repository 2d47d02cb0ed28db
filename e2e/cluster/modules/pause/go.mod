module kubemaas.local/pause

go 1.22
