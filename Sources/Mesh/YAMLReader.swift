// A small, strict YAML-subset reader for the local configuration file (LOCAL_XDS_PATH).
// It has no imports at all, like the rest of the Mesh module, so nothing links Foundation/ICU for
// it, and the module compiles standalone into a libFuzzer target (Fuzz/targets/local_config.swift).

/// One node of a document read by `YAMLReader`: a scalar, a sequence or a mapping, with its
/// optional tag and the 1-based line it starts on.
///
/// Scalars are kept as text: the reader does not resolve `123`, `true` or `null` into types; the
/// consumer decides (see `isNull`). An empty value (`key:` with nothing after it, or `- ` alone)
/// is an unquoted, untagged empty scalar. Equality compares lines too.
struct YAMLNode: Equatable {
    /// What a node holds.
    enum Content: Equatable {
        /// The decoded text, and whether it was written quoted (`"80"` versus `80`).
        case scalar(String, isQuoted: Bool)
        case sequence([YAMLNode])
        /// Entries in document order; keys are unique (the reader refuses duplicates).
        case mapping([Entry])
    }

    /// One key and its value in a mapping. Keys are always scalars (plain or quoted).
    struct Entry: Equatable {
        var key: String
        var value: YAMLNode
        /// The line of the key.
        var line: Int
    }

    var content: Content
    /// The tag name without its `!` (`!Exact a` has tag "Exact"), or nil.
    var tag: String?
    var line: Int

    /// The scalar text, or nil for a collection.
    var scalarText: String? {
        if case .scalar(let text, _) = content { return text }
        return nil
    }

    /// The items of a sequence, or nil.
    var sequenceItems: [YAMLNode]? {
        if case .sequence(let items) = content { return items }
        return nil
    }

    /// The entries of a mapping, or nil.
    var mappingEntries: [Entry]? {
        if case .mapping(let entries) = content { return entries }
        return nil
    }

    /// True for an untagged, unquoted empty value, `~` or `null` (the YAML core schema nulls).
    var isNull: Bool {
        guard tag == nil, case .scalar(let text, false) = content else { return false }
        return text.isEmpty || text == "~" || text == "null" || text == "Null" || text == "NULL"
    }

    /// "null", "a scalar", "a sequence", "a mapping" or "a tagged value", for error messages.
    var kindName: String {
        if isNull { return "null" }
        if tag != nil { return "a tagged value" }
        switch content {
        case .scalar: return "a scalar"
        case .sequence: return "a sequence"
        case .mapping: return "a mapping"
        }
    }

    /// The value for a key of a mapping (a linear search), or nil.
    subscript(key: String) -> YAMLNode? {
        mappingEntries?.first { $0.key == key }?.value
    }
}

/// Why a document was refused, with the 1-based line where the reader noticed.
struct YAMLError: Error, CustomStringConvertible, Equatable {
    let line: Int
    let reason: String

    var description: String { "line \(line): \(reason)" }

    /// Quotes text from the document for a message: escaped and cut to 64 characters, so an error
    /// message cannot carry control characters or megabytes of input into a log.
    static func quote(_ text: String) -> String {
        let cut = text.count > 64 ? String(text.prefix(64)) + "..." : text
        return cut.debugDescription
    }
}

/// Reads the YAML subset used by ztunnel's local configuration files into a `YAMLNode` tree.
///
/// Supported: block mappings and sequences by indentation (spaces only), compact nested entries
/// (`- - key: v`), flow collections `[...]` and `{...}` (nested, possibly over several lines, so
/// JSON documents read too), plain, single-quoted and double-quoted scalars, comments, one leading
/// `---`, and tags written `!Name value` on scalars and flow collections.
///
/// Refused with a `YAMLError` (never a trap): anchors and aliases, block scalars (`|`, `>`),
/// complex keys (`? `, collections as keys), directives (`%`), several documents, `...`, tags on
/// keys or block collections, `!!`/verbatim tags, multi-line plain or quoted scalars, duplicate
/// keys, tabs in block indentation, control characters, a lone carriage return, inputs over
/// `maximumBytes` and nesting deeper than `maximumDepth` (block and flow levels together).
/// Inside flow collections the indentation of continuation lines is not checked.
///
/// The parser is iterative (explicit stacks, no recursion) and reads each byte a bounded number
/// of times, so its time is linear in the input.
struct YAMLReader {
    static let maximumBytes = 1 << 20
    static let maximumDepth = 64

    /// The input, UTF-8. Every read goes through `peek`, which returns 0 past either end; 0 never
    /// occurs inside the input because `checkCharacters` refuses NUL.
    private let bytes: [UInt8]
    private var pos = 0
    private var line = 1
    private var lineStart = 0
    /// Open block collections, outermost first.
    private var stack: [BlockFrame] = []
    private var root: YAMLNode?

    private init(bytes: [UInt8]) { self.bytes = bytes }

    /// Parses one document. Returns nil when it has no content (empty, blank lines, comments, `---`).
    static func parse(_ text: String) throws -> YAMLNode? {
        guard text.utf8.count <= maximumBytes else {
            throw YAMLError(line: 1, reason: "the document is larger than \(maximumBytes) bytes")
        }
        var reader = YAMLReader(bytes: Array(text.utf8))
        try reader.checkCharacters()
        return try reader.document()
    }
}

// MARK: - Collection builders

/// A mapping or sequence under construction, shared by the block and flow parsers.
private struct Builder {
    let isMapping: Bool
    let line: Int
    let tag: String?
    var items: [YAMLNode] = []
    var entries: [YAMLNode.Entry] = []
    var keys: Set<String> = []
    /// The key waiting for its value (mappings), and the line of that key or of the `-` (sequences).
    var pendingKey = ""
    var pendingLine = 0

    init(isMapping: Bool, line: Int, tag: String?) {
        self.isMapping = isMapping
        self.line = line
        self.tag = tag
        self.pendingLine = line
    }

    /// Records the next key; a key already in this mapping is an error.
    mutating func setPendingKey(_ key: String, line: Int) throws {
        guard keys.insert(key).inserted else {
            throw YAMLError(line: line, reason: "duplicate key \(YAMLError.quote(key))")
        }
        pendingKey = key
        pendingLine = line
    }

    /// Appends an item, or the value of the pending key.
    mutating func add(_ node: YAMLNode) {
        if isMapping {
            entries.append(YAMLNode.Entry(key: pendingKey, value: node, line: pendingLine))
        } else {
            items.append(node)
        }
    }

    /// The finished collection.
    var node: YAMLNode {
        YAMLNode(content: isMapping ? .mapping(entries) : .sequence(items), tag: tag, line: line)
    }
}

/// An open block collection: its builder, the column of its keys or dashes, and whether the last
/// key or `-` is still waiting for its value.
private struct BlockFrame {
    var builder: Builder
    let indent: Int
    var awaiting = false
}

/// Where a flow collection is: expecting an item or key (at the start or after a comma), a comma
/// or the closing bracket (after an item), or a value (after a key's `:`).
private enum FlowState {
    case item, afterItem, afterColon
}

/// An open flow collection.
private struct FlowFrame {
    var builder: Builder
    var state = FlowState.item
}

/// Byte values the reader looks for.
private enum Byte {
    static let tab: UInt8 = 0x09, lf: UInt8 = 0x0A, cr: UInt8 = 0x0D, space: UInt8 = 0x20
    static let bang: UInt8 = 0x21, quote: UInt8 = 0x22, hash: UInt8 = 0x23, percent: UInt8 = 0x25
    static let ampersand: UInt8 = 0x26, apostrophe: UInt8 = 0x27, star: UInt8 = 0x2A, comma: UInt8 = 0x2C
    static let dash: UInt8 = 0x2D, dot: UInt8 = 0x2E, slash: UInt8 = 0x2F, colon: UInt8 = 0x3A
    static let greater: UInt8 = 0x3E, question: UInt8 = 0x3F, at: UInt8 = 0x40, leftBracket: UInt8 = 0x5B
    static let backslash: UInt8 = 0x5C, rightBracket: UInt8 = 0x5D, backtick: UInt8 = 0x60
    static let leftBrace: UInt8 = 0x7B, pipe: UInt8 = 0x7C, rightBrace: UInt8 = 0x7D
}

// MARK: - Cursor

extension YAMLReader {
    /// The byte at `pos + offset`, or 0 outside the input.
    private func peek(_ offset: Int = 0) -> UInt8 {
        let index = pos + offset
        return index >= 0 && index < bytes.count ? bytes[index] : 0
    }

    private var column: Int { pos - lineStart }

    private static func isBlank(_ byte: UInt8) -> Bool { byte == Byte.space || byte == Byte.tab }

    /// End of line or end of input (0).
    private static func isLineEnd(_ byte: UInt8) -> Bool { byte == Byte.lf || byte == Byte.cr || byte == 0 }

    /// What may follow an indicator such as `-` or `:`: a blank or the end of the line.
    private static func isSeparator(_ byte: UInt8) -> Bool { isBlank(byte) || isLineEnd(byte) }

    private static func isFlowIndicator(_ byte: UInt8) -> Bool {
        byte == Byte.comma || byte == Byte.leftBracket || byte == Byte.rightBracket
            || byte == Byte.leftBrace || byte == Byte.rightBrace
    }

    private func failure(_ reason: String) -> YAMLError { YAMLError(line: line, reason: reason) }

    /// Names a byte for an error message.
    private func describe(_ byte: UInt8) -> String {
        if byte == 0 { return "the end of the input" }
        if byte == Byte.lf || byte == Byte.cr { return "the end of the line" }
        if byte == Byte.space || byte == Byte.tab { return "a blank" }
        if byte < 0x80 { return "'\(Character(Unicode.Scalar(byte)))'" }
        return "a non-ASCII character"
    }

    private mutating func skipBlanks() {
        while YAMLReader.isBlank(peek()) { pos += 1 }
    }

    private mutating func skipToLineEnd() {
        while !YAMLReader.isLineEnd(peek()) { pos += 1 }
    }

    /// Consumes a line break (LF or CRLF) if there is one, starting a new line.
    private mutating func consumeLineEnd() {
        if peek() == Byte.cr { pos += 1 }
        if peek() == Byte.lf {
            pos += 1
            line += 1
            lineStart = pos
        }
    }

    /// A `#` starts a comment only at the start of a line or after a blank (`a#b` is one scalar).
    private func atComment() -> Bool {
        peek() == Byte.hash && (pos == lineStart || YAMLReader.isBlank(peek(-1)))
    }

    /// Skips blanks and a comment. Returns true, with the line break consumed, when nothing else
    /// is left on the line; false with the cursor on the next content otherwise.
    private mutating func endOfLine() -> Bool {
        skipBlanks()
        if atComment() { skipToLineEnd() }
        guard YAMLReader.isLineEnd(peek()) else { return false }
        consumeLineEnd()
        return true
    }

    /// Requires the rest of the line to be blank or a comment, and consumes it.
    private mutating func expectEndOfLine() throws {
        guard endOfLine() else { throw failure("unexpected \(describe(peek())) after the value") }
    }

    /// `---` or `...` at the start of a line, followed by a blank or the end of the line.
    private func atDocumentMarker(_ byte: UInt8) -> Bool {
        pos == lineStart && peek() == byte && peek(1) == byte && peek(2) == byte
            && YAMLReader.isSeparator(peek(3))
    }

    /// Refuses control characters (all but TAB, LF and CR before LF), DEL and C1 controls
    /// anywhere in the input, before parsing starts.
    private func checkCharacters() throws {
        var line = 1
        for (index, byte) in bytes.enumerated() {
            let next = index + 1 < bytes.count ? bytes[index + 1] : 0
            if byte == Byte.lf {
                line += 1
            } else if byte == Byte.cr {
                guard next == Byte.lf else {
                    throw YAMLError(line: line, reason: "a carriage return must be followed by a line feed")
                }
            } else if (byte < 0x20 && byte != Byte.tab) || byte == 0x7F || (byte == 0xC2 && next >= 0x80 && next <= 0x9F) {
                throw YAMLError(line: line, reason: "control characters are not allowed (quote them with escapes)")
            }
        }
    }
}

// MARK: - Block structure

extension YAMLReader {
    /// Reads the document line by line; returns the root, or nil when there is no content.
    private mutating func document() throws -> YAMLNode? {
        if peek() == 0xEF && peek(1) == 0xBB && peek(2) == 0xBF {
            pos = 3  // a byte order mark
            lineStart = 3
        }
        var sawMarker = false
        while pos < bytes.count {
            guard let column = try lineIndentation() else { continue }
            if column == 0, try documentLevelLine(sawMarker: &sawMarker) { continue }
            try blockLine(column)
        }
        try finishBlocks()
        return root
    }

    /// Skips a line's leading spaces. Returns the column of its content, or nil after consuming
    /// a blank or comment-only line. A tab before content is an error: its width is ambiguous.
    private mutating func lineIndentation() throws -> Int? {
        while peek() == Byte.space { pos += 1 }
        let column = self.column
        if peek() == Byte.tab {
            skipBlanks()
            guard YAMLReader.isLineEnd(peek()) || peek() == Byte.hash else {
                throw failure("tabs are not allowed in indentation")
            }
        }
        if peek() == Byte.hash { skipToLineEnd() }
        guard YAMLReader.isLineEnd(peek()) else { return column }
        consumeLineEnd()
        return nil
    }

    /// Handles `---`, `...` and `%` at column 0. Returns true when it consumed the line.
    private mutating func documentLevelLine(sawMarker: inout Bool) throws -> Bool {
        if atDocumentMarker(Byte.dash) {
            guard !sawMarker, root == nil, stack.isEmpty else { throw failure("multiple documents are not supported") }
            sawMarker = true
            pos += 3
            guard endOfLine() else { throw failure("content on the '---' line is not supported; start it on the next line") }
            return true
        }
        if atDocumentMarker(Byte.dot) { throw failure("document end markers ('...') are not supported") }
        if peek() == Byte.percent { throw failure("directives ('%') are not supported") }
        return false
    }

    /// True at a block sequence entry: `-` followed by a blank or the end of the line.
    private func atSequenceEntry() -> Bool {
        peek() == Byte.dash && YAMLReader.isSeparator(peek(1))
    }

    /// Places a line whose content starts at `column`: as the value awaited by the innermost
    /// collection, or as a new entry of an open collection after closing the deeper ones.
    private mutating func blockLine(_ column: Int) throws {
        let dash = atSequenceEntry()
        if let index = stack.indices.last, stack[index].awaiting {
            let indent = stack[index].indent
            // A mapping's value may be a sequence at the mapping's own indentation ("key:\n- a").
            if column > indent || (stack[index].builder.isMapping && column == indent && dash) {
                return try blockNode(column)
            }
            try attach(YAMLReader.emptyValue(line: stack[index].builder.pendingLine))
        }
        let closed = try closeBlocks(at: column, dash: dash)
        guard let index = stack.indices.last else {
            guard root == nil else { throw failure("unexpected content after the end of the document's root node") }
            return try blockNode(column)
        }
        guard stack[index].indent == column else {
            if column > stack[index].indent && !closed {
                throw failure("unexpected indentation: the value before is complete (multi-line scalars are not supported)")
            }
            throw failure("bad indentation: column \(column + 1) matches no open block (expected column \(stack[index].indent + 1))")
        }
        if stack[index].builder.isMapping {
            guard !dash else { throw failure("expected a mapping key, found a sequence entry") }
            try mappingEntry()
        } else {
            guard dash else { throw failure("expected a sequence entry ('- ')") }
            if try openItem() { try blockNode(self.column) }
        }
    }

    /// Closes the collections a line at `column` ends: deeper ones, and a sequence written at its
    /// parent mapping's indentation when the line is not one of its entries. Returns true when
    /// it closed any.
    private mutating func closeBlocks(at column: Int, dash: Bool) throws -> Bool {
        var closed = false
        while let index = stack.indices.last {
            let indent = stack[index].indent
            let compactSequence = !stack[index].builder.isMapping && indent == column && !dash
                && index > 0 && stack[index - 1].indent == column
            guard indent > column || compactSequence else { return closed }
            let frame = stack.removeLast()
            try attach(frame.builder.node)
            closed = true
        }
        return closed
    }

    /// Parses a node starting at `startColumn` that fills the awaited value (or is the root):
    /// nested `- ` entries, then a key opening a mapping, or a single-line value.
    private mutating func blockNode(_ startColumn: Int) throws {
        var column = startColumn
        while atSequenceEntry() {
            try push(mapping: false, indent: column)
            guard try openItem() else { return }
            column = self.column
        }
        let node = try inlineValue()
        guard atKeyIndicator() else {
            try attach(node)
            return try expectEndOfLine()
        }
        try push(mapping: true, indent: column)
        try addKey(node)
        try valueAfterKey()
    }

    /// Parses `key: value` (or `key:`) on a line continuing the innermost mapping.
    private mutating func mappingEntry() throws {
        let node = try inlineValue()
        guard atKeyIndicator() else { throw failure("expected 'key: value'") }
        try addKey(node)
        try valueAfterKey()
    }

    /// Parses what follows a key's `:`: a value on the same line, or nothing (the value is on
    /// the following lines, or empty).
    private mutating func valueAfterKey() throws {
        if endOfLine() { return }
        if atSequenceEntry() { throw failure("a block sequence cannot start on the line of its key") }
        let value = try inlineValue()
        if atKeyIndicator() { throw failure("a mapping cannot start on the line of its key (\"a: b: c\")") }
        try attach(value)
        try expectEndOfLine()
    }

    /// Consumes a `-` and the spaces after it, opening an item in the innermost sequence.
    /// Returns false when the line ends there.
    private mutating func openItem() throws -> Bool {
        guard let index = stack.indices.last else { throw failure("internal error: no open sequence") }
        stack[index].awaiting = true
        stack[index].builder.pendingLine = line
        pos += 1
        while peek() == Byte.space { pos += 1 }
        let tab = peek() == Byte.tab
        if endOfLine() { return false }
        // The item's column decides what lines belong to it; a tab makes it ambiguous.
        if tab { throw failure("tabs are not allowed in indentation (after '-')") }
        return true
    }

    /// True, with the `:` consumed, when a key indicator (`:` then a blank or the end of the
    /// line) follows after optional blanks; the cursor is left unchanged otherwise.
    private mutating func atKeyIndicator() -> Bool {
        let saved = pos
        skipBlanks()
        if peek() == Byte.colon && YAMLReader.isSeparator(peek(1)) {
            pos += 1
            return true
        }
        pos = saved
        return false
    }

    /// Makes `node` the pending key of the innermost mapping.
    private mutating func addKey(_ node: YAMLNode) throws {
        guard case .scalar(let key, _) = node.content else {
            throw YAMLError(line: node.line, reason: "complex keys (collections as keys) are not supported")
        }
        guard node.tag == nil else { throw YAMLError(line: node.line, reason: "tags on keys are not supported") }
        guard let index = stack.indices.last else { throw failure("internal error: no open mapping") }
        try stack[index].builder.setPendingKey(key, line: node.line)
        stack[index].awaiting = true
    }

    /// Opens a block collection whose first key or `-` is at `indent`.
    private mutating func push(mapping: Bool, indent: Int) throws {
        guard stack.count < YAMLReader.maximumDepth else {
            throw failure("nesting deeper than \(YAMLReader.maximumDepth) levels")
        }
        stack.append(BlockFrame(builder: Builder(isMapping: mapping, line: line, tag: nil), indent: indent))
    }

    /// Stores a finished node as the awaited value of the innermost collection, or as the root.
    private mutating func attach(_ node: YAMLNode) throws {
        guard let index = stack.indices.last else {
            guard root == nil else { throw failure("unexpected content after the end of the document's root node") }
            root = node
            return
        }
        guard stack[index].awaiting else { throw failure("internal error: no value expected") }
        stack[index].builder.add(node)
        stack[index].awaiting = false
    }

    /// At the end of the input: an awaited value is empty, and every open collection closes.
    private mutating func finishBlocks() throws {
        if let index = stack.indices.last, stack[index].awaiting {
            try attach(YAMLReader.emptyValue(line: stack[index].builder.pendingLine))
        }
        while let frame = stack.popLast() {
            try attach(frame.builder.node)
        }
    }

    /// The node for a value left empty (`key:` or `-` with nothing after it).
    private static func emptyValue(line: Int) -> YAMLNode {
        YAMLNode(content: .scalar("", isQuoted: false), tag: nil, line: line)
    }
}

// MARK: - Values on one line, and flow collections

extension YAMLReader {
    /// Parses one node that starts at the cursor: an optionally tagged scalar, which must end on
    /// this line, or a flow collection, which may span lines.
    private mutating func inlineValue() throws -> YAMLNode {
        let startLine = line
        var tag: String?
        if peek() == Byte.bang { tag = try parseTag() }
        if peek() == Byte.leftBracket || peek() == Byte.leftBrace { return try flowCollection(tag: tag) }
        let (text, quoted) = try scalar(flow: false)
        return YAMLNode(content: .scalar(text, isQuoted: quoted), tag: tag, line: startLine)
    }

    /// Parses `!Name` and the blanks after it; the tagged value must follow on the same line.
    /// Only local tags made of letters, digits, `-` and `_` are accepted (not `!!str`, `!<...>`).
    private mutating func parseTag() throws -> String {
        pos += 1
        let start = pos
        while YAMLReader.isTagCharacter(peek()) { pos += 1 }
        guard pos > start, YAMLReader.isSeparator(peek()) else {
            throw failure("unsupported tag syntax; only '!Name value' is supported")
        }
        let name = String(decoding: bytes[start..<pos], as: UTF8.self)
        skipBlanks()
        if YAMLReader.isLineEnd(peek()) || atComment() {
            throw failure("the tag !\(name) must be followed by a value on the same line")
        }
        return name
    }

    /// Letters, digits, `-` and `_`.
    private static func isTagCharacter(_ byte: UInt8) -> Bool {
        (byte >= 0x30 && byte <= 0x39) || (byte >= 0x41 && byte <= 0x5A) || (byte >= 0x61 && byte <= 0x7A)
            || byte == Byte.dash || byte == 0x5F
    }

    /// Parses a quoted or plain scalar; returns its text and whether it was quoted.
    private mutating func scalar(flow: Bool) throws -> (String, Bool) {
        switch peek() {
        case Byte.quote: return (try doubleQuoted(), true)
        case Byte.apostrophe: return (try singleQuoted(), true)
        default:
            try checkPlainStart(flow: flow)
            return (plain(flow: flow), false)
        }
    }

    /// Refuses what cannot start a plain scalar, naming the unsupported feature when there is one.
    private func checkPlainStart(flow: Bool) throws {
        let byte = peek(), next = peek(1)
        let indicatorAlone = YAMLReader.isSeparator(next) || (flow && YAMLReader.isFlowIndicator(next))
        switch byte {
        case Byte.ampersand: throw failure("anchors ('&') are not supported")
        case Byte.star: throw failure("aliases ('*') are not supported")
        case Byte.pipe, Byte.greater: throw failure("block scalars ('|', '>') are not supported")
        case Byte.percent: throw failure("directives ('%') are not supported; quote a value starting with '%'")
        case Byte.at, Byte.backtick: throw failure("\(describe(byte)) is reserved; quote the value")
        case Byte.bang: throw failure("a node can have only one tag")
        case Byte.hash: throw failure("'#' starts a comment only after a blank; quote the value")
        case Byte.question where indicatorAlone: throw failure("complex keys ('? ') are not supported")
        case Byte.colon where indicatorAlone: throw failure("a key is missing before ':'")
        case Byte.dash where indicatorAlone: throw failure("unexpected '-' here")
        default:
            if YAMLReader.isLineEnd(byte) || YAMLReader.isBlank(byte) || YAMLReader.isFlowIndicator(byte) {
                throw failure("expected a value, found \(describe(byte))")
            }
        }
    }

    /// Reads a plain scalar up to the end of the line, `: `, ` #`, or (in flow) a flow indicator.
    /// Trailing blanks are not part of it and are left unread.
    private mutating func plain(flow: Bool) -> String {
        let start = pos
        var end = pos
        while true {
            let byte = peek()
            if YAMLReader.isLineEnd(byte) || (flow && YAMLReader.isFlowIndicator(byte)) { break }
            if byte == Byte.colon && (YAMLReader.isSeparator(peek(1)) || (flow && YAMLReader.isFlowIndicator(peek(1)))) { break }
            if byte == Byte.hash && pos > start && YAMLReader.isBlank(peek(-1)) { break }
            pos += 1
            if !YAMLReader.isBlank(byte) { end = pos }
        }
        pos = end
        return String(decoding: bytes[start..<end], as: UTF8.self)
    }

    /// Reads a single-quoted scalar ('' is a quote). It must end on its line.
    private mutating func singleQuoted() throws -> String {
        pos += 1
        var text: [UInt8] = []
        while true {
            let byte = peek()
            if byte == Byte.apostrophe {
                pos += 1
                guard peek() == Byte.apostrophe else { return String(decoding: text, as: UTF8.self) }
            } else if YAMLReader.isLineEnd(byte) {
                throw failure("a single-quoted scalar must end on the line it starts on")
            }
            text.append(byte)
            pos += 1
        }
    }

    /// Reads a double-quoted scalar with its escapes. It must end on its line.
    private mutating func doubleQuoted() throws -> String {
        pos += 1
        var text: [UInt8] = []
        while true {
            let byte = peek()
            if byte == Byte.quote {
                pos += 1
                return String(decoding: text, as: UTF8.self)
            }
            if YAMLReader.isLineEnd(byte) { throw failure("a double-quoted scalar must end on the line it starts on") }
            if byte == Byte.backslash {
                try escape(into: &text)
            } else {
                text.append(byte)
                pos += 1
            }
        }
    }

    /// Decodes the escape at the cursor (a backslash). Known: \" \\ \/ \0 \a \b \t \n \v \f \r
    /// \e, \ followed by a space or tab, \xXX, \uXXXX (with surrogate pairs) and \UXXXXXXXX.
    private mutating func escape(into text: inout [UInt8]) throws {
        let code = peek(1)
        if let byte = YAMLReader.simpleEscape(code) {
            text.append(byte)
            pos += 2
            return
        }
        let digits: Int
        switch code {
        case 0x78: digits = 2  // x
        case 0x75: digits = 4  // u
        case 0x55: digits = 8  // U
        default:
            if YAMLReader.isLineEnd(code) { throw failure("a double-quoted scalar must end on the line it starts on") }
            let shown = code > 0x20 && code < 0x7F ? " '\\\(Character(Unicode.Scalar(code)))'" : ""
            throw failure("unknown escape\(shown) in a double-quoted scalar")
        }
        pos += 2
        var value = try hexNumber(digits: digits)
        if digits == 4, value >= 0xD800, value <= 0xDBFF {
            value = try lowSurrogate(after: value)
        }
        try YAMLReader.appendUTF8(value, to: &text, line: line)
    }

    /// The byte a one-character escape stands for (`n` → LF), or nil.
    private static func simpleEscape(_ code: UInt8) -> UInt8? {
        switch code {
        case Byte.quote, Byte.backslash, Byte.slash, Byte.space: return code
        case Byte.tab, 0x74: return Byte.tab  // \<TAB>, \t
        case 0x30: return 0  // \0
        case 0x61: return 0x07  // \a
        case 0x62: return 0x08  // \b
        case 0x6E: return Byte.lf  // \n
        case 0x76: return 0x0B  // \v
        case 0x66: return 0x0C  // \f
        case 0x72: return Byte.cr  // \r
        case 0x65: return 0x1B  // \e
        default: return nil
        }
    }

    /// Reads the `\uDC00`-`\uDFFF` half of a surrogate pair and combines it with `high`.
    private mutating func lowSurrogate(after high: UInt32) throws -> UInt32 {
        guard peek() == Byte.backslash, peek(1) == 0x75 else {
            throw failure("a \\u escape of a high surrogate must be followed by a low surrogate")
        }
        pos += 2
        let low = try hexNumber(digits: 4)
        guard low >= 0xDC00, low <= 0xDFFF else { throw failure("invalid surrogate pair in a \\u escape") }
        return 0x10000 + ((high - 0xD800) << 10) + (low - 0xDC00)
    }

    /// Reads exactly `digits` hexadecimal digits (at most 8, so the value fits).
    private mutating func hexNumber(digits: Int) throws -> UInt32 {
        var value: UInt32 = 0
        for _ in 0..<digits {
            let byte = peek()
            let digit: UInt8
            switch byte {
            case 0x30...0x39: digit = byte - 0x30
            case 0x41...0x46: digit = byte - 0x41 + 10
            case 0x61...0x66: digit = byte - 0x61 + 10
            default: throw failure("expected \(digits) hexadecimal digits in an escape")
            }
            value = value << 4 | UInt32(digit)
            pos += 1
        }
        return value
    }

    /// Appends a Unicode scalar value as UTF-8; surrogates and values past U+10FFFF are errors.
    private static func appendUTF8(_ value: UInt32, to text: inout [UInt8], line: Int) throws {
        guard value <= 0x10FFFF, value < 0xD800 || value > 0xDFFF else {
            throw YAMLError(line: line, reason: "an escape names an invalid Unicode scalar")
        }
        switch value {
        case 0..<0x80:
            text.append(UInt8(value))
        case 0x80..<0x800:
            text += [UInt8(0xC0 | value >> 6), UInt8(0x80 | value & 0x3F)]
        case 0x800..<0x10000:
            text += [UInt8(0xE0 | value >> 12), UInt8(0x80 | value >> 6 & 0x3F), UInt8(0x80 | value & 0x3F)]
        default:
            text += [UInt8(0xF0 | value >> 18), UInt8(0x80 | value >> 12 & 0x3F),
                     UInt8(0x80 | value >> 6 & 0x3F), UInt8(0x80 | value & 0x3F)]
        }
    }
}

// MARK: - Flow collections

extension YAMLReader {
    /// Parses a flow collection at the cursor (`[` or `{`), nested ones included, with an explicit
    /// stack. Blank lines and comments may separate its parts; a scalar must end on its line.
    private mutating func flowCollection(tag: String?) throws -> YAMLNode {
        let base = stack.count
        let openLine = line
        var frames: [FlowFrame] = []
        try openFlow(&frames, tag: tag, base: base)
        while let index = frames.indices.last {
            try skipFlowSpace()
            let byte = peek()
            if byte == 0 { throw YAMLError(line: openLine, reason: "flow collection never closed") }
            if byte == Byte.rightBracket || byte == Byte.rightBrace {
                if let node = try closeFlow(&frames) { return node }
            } else if frames[index].state == .afterItem {
                guard byte == Byte.comma else {
                    let closer = frames[index].builder.isMapping ? "'}'" : "']'"
                    throw failure("expected ',' or \(closer), found \(describe(byte))")
                }
                pos += 1
                frames[index].state = .item
            } else {
                try flowNode(&frames, base: base)
            }
        }
        throw failure("internal error: flow collection without a frame")
    }

    /// Opens a nested flow collection at the cursor, counting block levels (`base`) towards the depth limit.
    private mutating func openFlow(_ frames: inout [FlowFrame], tag: String?, base: Int) throws {
        guard base + frames.count < YAMLReader.maximumDepth else {
            throw failure("nesting deeper than \(YAMLReader.maximumDepth) levels")
        }
        let builder = Builder(isMapping: peek() == Byte.leftBrace, line: line, tag: tag)
        frames.append(FlowFrame(builder: builder))
        pos += 1
    }

    /// Closes the innermost flow collection at its bracket. Returns the node when it was the
    /// outermost one; otherwise stores it in its parent and returns nil.
    private mutating func closeFlow(_ frames: inout [FlowFrame]) throws -> YAMLNode? {
        guard var frame = frames.popLast() else { throw failure("internal error: no flow collection to close") }
        let expected = frame.builder.isMapping ? Byte.rightBrace : Byte.rightBracket
        guard peek() == expected else {
            throw failure("expected \(describe(expected)) to close the collection opened on line \(frame.builder.line), found \(describe(peek()))")
        }
        pos += 1
        if frame.state == .afterColon { frame.builder.add(YAMLReader.emptyValue(line: frame.builder.pendingLine)) }
        guard let parent = frames.indices.last else { return frame.builder.node }
        frames[parent].builder.add(frame.builder.node)
        frames[parent].state = .afterItem
        return nil
    }

    /// Reads the next key or value of the innermost flow collection: scalars are stored, a
    /// nested collection is opened.
    private mutating func flowNode(_ frames: inout [FlowFrame], base: Int) throws {
        guard let index = frames.indices.last else { throw failure("internal error: no flow collection") }
        let isMapping = frames[index].builder.isMapping
        if isMapping && frames[index].state == .item { return try flowKey(&frames[index]) }
        if peek() == Byte.comma && frames[index].state == .afterColon {
            // "{a: , b: 1}": an empty value.
            frames[index].builder.add(YAMLReader.emptyValue(line: frames[index].builder.pendingLine))
            frames[index].state = .item
            pos += 1
            return
        }
        let startLine = line
        var tag: String?
        if peek() == Byte.bang { tag = try parseTag() }
        if peek() == Byte.leftBracket || peek() == Byte.leftBrace { return try openFlow(&frames, tag: tag, base: base) }
        let (text, quoted) = try scalar(flow: true)
        if !isMapping {
            skipBlanks()
            if peek() == Byte.colon { throw failure("'key: value' pairs inside a flow sequence are not supported; write {key: value}") }
        }
        frames[index].builder.add(YAMLNode(content: .scalar(text, isQuoted: quoted), tag: tag, line: startLine))
        frames[index].state = .afterItem
    }

    /// Reads a flow mapping key and its `:`, which must be on the same line.
    private mutating func flowKey(_ frame: inout FlowFrame) throws {
        let byte = peek()
        if byte == Byte.leftBracket || byte == Byte.leftBrace { throw failure("complex keys (collections as keys) are not supported") }
        if byte == Byte.bang { throw failure("tags on keys are not supported") }
        let startLine = line
        let (key, _) = try scalar(flow: true)
        skipBlanks()
        guard peek() == Byte.colon else {
            throw failure("expected ':' after the key \(YAMLError.quote(key)), found \(describe(peek()))")
        }
        pos += 1
        try frame.builder.setPendingKey(key, line: startLine)
        frame.state = .afterColon
    }

    /// Skips blanks, line breaks and comments inside a flow collection. A document marker at
    /// the start of a line is an error there.
    private mutating func skipFlowSpace() throws {
        while true {
            let byte = peek()
            if YAMLReader.isBlank(byte) {
                pos += 1
            } else if byte == Byte.lf || byte == Byte.cr {
                consumeLineEnd()
                if atDocumentMarker(Byte.dash) || atDocumentMarker(Byte.dot) {
                    throw failure("a document marker cannot appear inside a flow collection")
                }
            } else if atComment() {
                skipToLineEnd()
            } else {
                return
            }
        }
    }
}
