const http = require("http");
http.createServer((req, res) => res.end("shop\n")).listen(8080);
