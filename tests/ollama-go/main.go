// A stand-in Ollama for the differential tests: it decodes each forwarded route's body the
// way Ollama does, with Go's own encoding/json (case-insensitive field names, Unicode simple
// folding, the last of several matching keys wins) into request structs whose field names,
// JSON tags and types follow Ollama's (api/types.go, openai/, anthropic/), and answers with
// what it read: the model it would run, the context and output limits, keep_alive, and the
// characters of text the model would read. A test sends a body through the gateway and
// compares what the gateway's guards allowed with what this reading acts on.
//
// Usage: ollama-go ADDR MODEL[,MODEL...]
package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"sort"
	"strings"
	"unicode/utf8"
)

type ToolCallFunction struct {
	Index     int            `json:"index"`
	Name      string         `json:"name"`
	Arguments map[string]any `json:"arguments"`
}

type ToolCall struct {
	ID       string           `json:"id,omitempty"`
	Function ToolCallFunction `json:"function"`
}

type Message struct {
	Role       string     `json:"role"`
	Content    string     `json:"content"`
	Thinking   string     `json:"thinking,omitempty"`
	Images     []string   `json:"images,omitempty"`
	ToolCalls  []ToolCall `json:"tool_calls,omitempty"`
	ToolName   string     `json:"tool_name,omitempty"`
	ToolCallID string     `json:"tool_call_id,omitempty"`
}

type ChatRequest struct {
	Model     string          `json:"model"`
	Messages  []Message       `json:"messages"`
	Stream    *bool           `json:"stream,omitempty"`
	Format    json.RawMessage `json:"format,omitempty"`
	KeepAlive any             `json:"keep_alive,omitempty"`
	Tools     json.RawMessage `json:"tools,omitempty"`
	Options   map[string]any  `json:"options"`
	Think     any             `json:"think,omitempty"`
}

type GenerateRequest struct {
	Model     string          `json:"model"`
	Prompt    string          `json:"prompt"`
	Suffix    string          `json:"suffix"`
	System    string          `json:"system"`
	Template  string          `json:"template"`
	Context   []int           `json:"context,omitempty"`
	Stream    *bool           `json:"stream,omitempty"`
	Raw       bool            `json:"raw,omitempty"`
	Format    json.RawMessage `json:"format,omitempty"`
	KeepAlive any             `json:"keep_alive,omitempty"`
	Images    []string        `json:"images,omitempty"`
	Options   map[string]any  `json:"options"`
}

type EmbedRequest struct {
	Model      string         `json:"model"`
	Input      any            `json:"input"`
	KeepAlive  any            `json:"keep_alive,omitempty"`
	Truncate   *bool          `json:"truncate,omitempty"`
	Dimensions int            `json:"dimensions,omitempty"`
	Options    map[string]any `json:"options"`
}

type EmbeddingRequest struct {
	Model     string         `json:"model"`
	Prompt    string         `json:"prompt"`
	KeepAlive any            `json:"keep_alive,omitempty"`
	Options   map[string]any `json:"options"`
}

// OpenAI's legacy completions, as Ollama's openai layer reads them.
type CompletionRequest struct {
	Model       string   `json:"model"`
	Prompt      any      `json:"prompt"`
	MaxTokens   *int     `json:"max_tokens"`
	Stream      bool     `json:"stream"`
	Stop        any      `json:"stop"`
	Suffix      string   `json:"suffix"`
	Temperature *float32 `json:"temperature"`
	Seed        *int     `json:"seed"`
}

type OpenAIEmbedRequest struct {
	Model          string `json:"model"`
	Input          any    `json:"input"`
	EncodingFormat string `json:"encoding_format"`
	Dimensions     int    `json:"dimensions"`
}

type ResponsesItem struct {
	Type      string `json:"type"`
	Role      string `json:"role"`
	Content   any    `json:"content"`
	Name      string `json:"name"`
	Arguments string `json:"arguments"`
	CallID    string `json:"call_id"`
	Output    any    `json:"output"`
}

type ResponsesRequest struct {
	Model           string          `json:"model"`
	Input           json.RawMessage `json:"input"`
	Instructions    string          `json:"instructions"`
	Tools           json.RawMessage `json:"tools"`
	MaxOutputTokens *int            `json:"max_output_tokens"`
	Stream          *bool           `json:"stream"`
	Text            json.RawMessage `json:"text"`
}

type AnthropicMessage struct {
	Role    string `json:"role"`
	Content any    `json:"content"`
}

type MessagesRequest struct {
	Model         string             `json:"model"`
	MaxTokens     int                `json:"max_tokens"`
	Messages      []AnthropicMessage `json:"messages"`
	System        any                `json:"system"`
	Stream        bool               `json:"stream"`
	StopSequences []string           `json:"stop_sequences"`
	Tools         json.RawMessage    `json:"tools"`
}

// What the model would run and read.
type Reading struct {
	Route string `json:"route"`
	// Not "model": the gateway writes the public name over every "model" of the answer.
	Model      string `json:"ran_model"`
	NumCtx     any    `json:"num_ctx"`
	NumPredict any    `json:"num_predict"`
	KeepAlive  any    `json:"keep_alive"`
	TextChars  int    `json:"text_chars"`
	Messages   int    `json:"messages"`
	// Token ids of a native `context` the model reads before the prompt.
	Context int `json:"context"`
	// Images the model sees, and the largest one's base64 length.
	Images       int      `json:"images"`
	LargestImage int      `json:"largest_image"`
	Inputs       int      `json:"inputs"`
	Options      []string `json:"options"`
}

func runes(s string) int { return utf8.RuneCountInString(s) }

// The key of a content part that holds its media, by the part's type as Ollama's decoders
// switch on it (exact).
func mediaKey(m map[string]any) string {
	switch m["type"] {
	case "image":
		return "source"
	case "input_image", "image_url":
		return "image_url"
	case "input_file":
		return "file_data"
	}
	return ""
}

// The images in decoded content parts (Anthropic blocks, Responses parts), tool results
// included.
func partImages(v any, r *Reading) {
	switch t := v.(type) {
	case []any:
		for _, i := range t {
			partImages(i, r)
		}
	case map[string]any:
		if k := mediaKey(t); k != "" {
			media := t[k]
			if m, ok := media.(map[string]any); ok {
				if d, ok := m["data"]; ok {
					media = d
				} else {
					media = m["url"]
				}
			}
			s, _ := media.(string)
			addImage(r, s)
			return
		}
		for _, i := range t {
			partImages(i, r)
		}
	}
}

func addImage(r *Reading, s string) {
	r.Images++
	if i := strings.LastIndexByte(s, ','); i >= 0 {
		s = s[i+1:]
	}
	if len(s) > r.LargestImage {
		r.LargestImage = len(s)
	}
}

// Characters of every string in a decoded `any` (parts, inputs), map keys left out, and
// the media of media parts.
func anyChars(v any) int {
	switch t := v.(type) {
	case string:
		return runes(t)
	case []any:
		n := 0
		for _, i := range t {
			n += anyChars(i)
		}
		return n
	case map[string]any:
		n := 0
		media := mediaKey(t)
		for k, i := range t {
			if k == "type" || k == "cache_control" || k == media {
				continue
			}
			n += anyChars(i)
		}
		return n
	}
	return 0
}

func rawChars(r json.RawMessage) int {
	if len(r) == 0 {
		return 0
	}
	var v any
	if json.Unmarshal(r, &v) != nil {
		return runes(string(r))
	}
	return anyChars(v)
}

func optionsReading(r *Reading, o map[string]any) {
	// Ollama's Options.FromMap looks options up by their exact names.
	r.NumCtx = o["num_ctx"]
	r.NumPredict = o["num_predict"]
	r.Options = []string{}
	for k := range o {
		r.Options = append(r.Options, k)
	}
	sort.Strings(r.Options)
}

func inputs(v any) int {
	switch t := v.(type) {
	case nil:
		return 0
	case []any:
		return len(t)
	}
	return 1
}

func read(path string, body []byte) (Reading, error) {
	r := Reading{Route: path}
	switch path {
	case "/api/chat":
		var q ChatRequest
		if err := json.Unmarshal(body, &q); err != nil {
			return r, err
		}
		r.Model, r.KeepAlive, r.Messages = q.Model, q.KeepAlive, len(q.Messages)
		optionsReading(&r, q.Options)
		for _, m := range q.Messages {
			r.TextChars += runes(m.Content) + runes(m.Thinking) + runes(m.ToolName) +
				runes(m.ToolCallID)
			for _, i := range m.Images {
				addImage(&r, i)
			}
			for _, c := range m.ToolCalls {
				args, _ := json.Marshal(c.Function.Arguments)
				r.TextChars += runes(c.Function.Name) + runes(string(args))
			}
		}
		r.TextChars += rawChars(q.Tools) + rawChars(q.Format)
	case "/api/generate":
		var q GenerateRequest
		if err := json.Unmarshal(body, &q); err != nil {
			return r, err
		}
		r.Model, r.KeepAlive = q.Model, q.KeepAlive
		optionsReading(&r, q.Options)
		r.TextChars = runes(q.Prompt) + runes(q.Suffix) + runes(q.System) + runes(q.Template) +
			rawChars(q.Format)
		r.Context = len(q.Context)
		for _, i := range q.Images {
			addImage(&r, i)
		}
	case "/api/embed":
		var q EmbedRequest
		if err := json.Unmarshal(body, &q); err != nil {
			return r, err
		}
		r.Model, r.KeepAlive = q.Model, q.KeepAlive
		optionsReading(&r, q.Options)
		r.TextChars, r.Inputs = anyChars(q.Input), inputs(q.Input)
	case "/api/embeddings":
		var q EmbeddingRequest
		if err := json.Unmarshal(body, &q); err != nil {
			return r, err
		}
		r.Model, r.KeepAlive = q.Model, q.KeepAlive
		optionsReading(&r, q.Options)
		r.TextChars = runes(q.Prompt)
	case "/v1/completions":
		var q CompletionRequest
		if err := json.Unmarshal(body, &q); err != nil {
			return r, err
		}
		r.Model = q.Model
		if q.MaxTokens != nil {
			r.NumPredict = *q.MaxTokens
		}
		r.TextChars = anyChars(q.Prompt) + runes(q.Suffix) + anyChars(q.Stop)
	case "/v1/embeddings":
		var q OpenAIEmbedRequest
		if err := json.Unmarshal(body, &q); err != nil {
			return r, err
		}
		r.Model = q.Model
		r.TextChars, r.Inputs = anyChars(q.Input), inputs(q.Input)
	case "/v1/responses":
		var q ResponsesRequest
		if err := json.Unmarshal(body, &q); err != nil {
			return r, err
		}
		r.Model = q.Model
		if q.MaxOutputTokens != nil {
			r.NumPredict = *q.MaxOutputTokens
		}
		r.TextChars = runes(q.Instructions) + rawChars(q.Tools) + rawChars(q.Text)
		var s string
		var items []ResponsesItem
		if json.Unmarshal(q.Input, &s) == nil {
			r.TextChars += runes(s)
			r.Messages = 1
		} else if json.Unmarshal(q.Input, &items) == nil {
			r.Messages = len(items)
			for _, i := range items {
				r.TextChars += anyChars(i.Content) + runes(i.Name) + runes(i.Arguments) +
					anyChars(i.Output)
				partImages(i.Content, &r)
			}
		}
	case "/v1/messages":
		var q MessagesRequest
		if err := json.Unmarshal(body, &q); err != nil {
			return r, err
		}
		r.Model, r.NumPredict, r.Messages = q.Model, q.MaxTokens, len(q.Messages)
		r.TextChars = anyChars(q.System) + rawChars(q.Tools)
		for _, m := range q.Messages {
			r.TextChars += anyChars(m.Content)
			partImages(m.Content, &r)
		}
		for _, s := range q.StopSequences {
			r.TextChars += runes(s)
		}
	default:
		return r, fmt.Errorf("no such route")
	}
	return r, nil
}

func main() {
	addr, models := os.Args[1], strings.Split(os.Args[2], ",")
	http.HandleFunc("/api/version", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprint(w, `{"version":"0.30.0"}`)
	})
	tags := func(w http.ResponseWriter, _ *http.Request) {
		list := []map[string]any{}
		for _, m := range models {
			list = append(list, map[string]any{"name": m, "model": m,
				"modified_at": "2026-01-01T00:00:00Z", "size": 1, "digest": "d"})
		}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(map[string]any{"models": list})
	}
	http.HandleFunc("/api/tags", tags)
	http.HandleFunc("/api/ps", tags)
	http.HandleFunc("/", func(w http.ResponseWriter, req *http.Request) {
		var body []byte
		buf := make([]byte, 1<<16)
		for {
			n, err := req.Body.Read(buf)
			body = append(body, buf[:n]...)
			if err != nil {
				break
			}
		}
		r, err := read(req.URL.Path, body)
		w.Header().Set("Content-Type", "application/json")
		if err != nil {
			w.WriteHeader(http.StatusBadRequest)
			json.NewEncoder(w).Encode(map[string]any{"error": err.Error()})
			return
		}
		// The answer carries the reading; `model` is what a real answer names.
		json.NewEncoder(w).Encode(map[string]any{"model": r.Model, "done": true,
			"message": map[string]any{"role": "assistant", "content": "ok"},
			"read":    r, "prompt_eval_count": 1, "eval_count": 1})
	})
	if err := http.ListenAndServe(addr, nil); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
