module qwen-gateway/ollama-go

go 1.19
