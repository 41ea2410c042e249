setenv http_proxy http://ignored.example:8080
