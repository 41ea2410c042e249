# corporate proxy for interactive shells
export HTTPS_PROXY="http://proxy.corp.bank.example:3128" NO_PROXY=".corp.bank.example"
if [ -n "$BASH" ]; then export HTTP_PROXY=$http_proxy; fi
export ALL_PROXY='socks5://broken
