"""The prompt and negative prompt boxes: emphasis keys, the token count, the Extras menu of LoRAs and embeddings,
and the closed-vocabulary note for the bundled models."""
from __future__ import annotations

import threading
from pathlib import Path

from PySide6.QtCore import QEvent, Qt, Signal
from PySide6.QtGui import QTextCursor
from PySide6.QtWidgets import (QComboBox, QFileDialog, QHBoxLayout, QInputDialog, QLabel, QMenu, QPlainTextEdit,
                               QPushButton, QSizePolicy, QVBoxLayout, QWidget)

from app.document import Document
from app.panels import _set, fill_names, install_model
from app.prompt_edit import nudge_weight
from engine import api


class PromptPanel(QWidget):
    """Prompt and negative prompt; for a model with a closed vocabulary (the bundled ones), an example prompt and a
    warning naming the words it will ignore."""

    PLACEHOLDER = "Prompt: what to generate"
    tokenizerLoaded = Signal(object, object)  # (model info, its prompt tokenizer or None), from a loader thread
    styleSaved = Signal(str, str, str)  # name, prompt, negative prompt: the window keeps it in the settings
    styleDeleted = Signal(str)
    SYNTAX = ("(word:1.3) or (word) weighs words up, [word] down (Ctrl+Up / Ctrl+Down on a word or selection); BREAK "
              "starts a new 75-token chunk; [cat:dog:0.5] switches words halfway, [cat|dog] alternates them; "
              "<lora:name:0.8> applies a LoRA, embedding:name an embedding. Long prompts are read in whole.")

    def __init__(self, doc: Document, parent=None):
        super().__init__(parent)
        self.doc = doc
        self.model: api.ModelInfo | None = None
        self.prompt = QPlainTextEdit(placeholderText=self.PLACEHOLDER, toolTip=self.SYNTAX)
        self.negative = QPlainTextEdit(placeholderText="Negative prompt", toolTip=self.SYNTAX)
        self.hint = QLabel(wordWrap=True, visible=False)
        self.count = QLabel(toolTip="Tokens in the prompt / what its 75-token chunks hold: a longer prompt is read "
                                    "in whole, one more chunk at a time")
        self.count.setStyleSheet("color: gray")
        self._tokenizer = None
        self.tokenizerLoaded.connect(self._tokenizer_loaded)
        self.style = QComboBox(toolTip="A saved style: its prompt and negative prompt wrap yours when generating "
                                       "({prompt} in a style's text marks where yours goes; else it is appended)")
        self.style.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToContents)
        self.style.currentIndexChanged.connect(lambda: self.doc.set_param("style", self.style.currentData() or ""))
        self.set_styles([])
        self.extras_button = QPushButton("Extras", toolTip="LoRA files, textual-inversion embeddings and styles")
        self.extras_button.setSizePolicy(QSizePolicy.Policy.Fixed, QSizePolicy.Policy.Fixed)
        self.extras_menu = QMenu(self.extras_button)
        self.extras_button.setMenu(self.extras_menu)
        self.extras_menu.aboutToShow.connect(self.fill_extras_menu)
        self.prompt.setMaximumHeight(90)
        self.negative.setMaximumHeight(60)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.prompt)
        row = QHBoxLayout()
        row.addWidget(self.hint, 1)
        row.addWidget(self.style, 0, Qt.AlignmentFlag.AlignTop)
        row.addStretch()
        row.addWidget(self.count, 0, Qt.AlignmentFlag.AlignTop)
        row.addWidget(self.extras_button, 0, Qt.AlignmentFlag.AlignTop)
        lay.addLayout(row)
        lay.addWidget(self.negative)
        self.prompt.installEventFilter(self)
        self.negative.installEventFilter(self)
        self.prompt.textChanged.connect(self._prompt_edited)
        self.negative.textChanged.connect(lambda: self.doc.set_param("negative_prompt", self.negative.toPlainText()))

    def _prompt_edited(self) -> None:
        self.doc.set_param("prompt", self.prompt.toPlainText())
        self._check_words()
        self._count_tokens()

    def _load_tokenizer(self, info: api.ModelInfo) -> None:
        try:
            tokenizer = api.prompt_tokenizer(info)
        except Exception:  # no vocabulary file: no count, nothing else lost
            tokenizer = None
        try:
            self.tokenizerLoaded.emit(info, tokenizer)
        except RuntimeError:  # the panel went away meanwhile
            pass

    def _tokenizer_loaded(self, info, tokenizer) -> None:
        if info == self.model:
            self._tokenizer = tokenizer
            self._count_tokens()

    def _count_tokens(self) -> None:
        if self._tokenizer is None:
            self.count.setText("")
            return
        n, chunks = api.prompt_tokens(self._tokenizer, self.prompt.toPlainText())
        self.count.setText(f"{n}/{(self._tokenizer.max_len - 2) * chunks}")

    def set_model(self, info: api.ModelInfo | None) -> None:
        """The model that will read the prompt: its example prompt as the placeholder, its vocabulary for the check."""
        if info == self.model:
            return
        self.model, self._tokenizer = info, None
        if info is not None:
            threading.Thread(target=self._load_tokenizer, args=(info,), daemon=True).start()
        self._count_tokens()
        vocab = info.vocabulary if info is not None else ()
        example = api.example_prompt(vocab)
        self.prompt.setPlaceholderText(f"{self.PLACEHOLDER}, e.g. {example}" if example else self.PLACEHOLDER)
        self.hint.setToolTip(f"{info.name} knows these words: {' '.join(vocab)}" if vocab else "")
        self._check_words()

    def eventFilter(self, obj, event) -> bool:
        steps = {Qt.Key.Key_Up: 0.1, Qt.Key.Key_Down: -0.1}
        if (event.type() == QEvent.Type.KeyPress and event.key() in steps
                and event.modifiers() == Qt.KeyboardModifier.ControlModifier):
            self.nudge(obj, steps[event.key()])
            return True
        return super().eventFilter(obj, event)

    @staticmethod
    def nudge(edit: QPlainTextEdit, step: float) -> None:
        """Ctrl+Up / Ctrl+Down: the emphasis of the selection or the word at the cursor up or down by 0.1, one edit."""
        cursor = edit.textCursor()
        text = edit.toPlainText()
        new, start, end = nudge_weight(text, cursor.selectionStart(), cursor.selectionEnd(), step)
        if new == text:
            return
        cursor.select(QTextCursor.SelectionType.Document)
        cursor.insertText(new)
        cursor.setPosition(start)
        cursor.setPosition(end, QTextCursor.MoveMode.KeepAnchor)
        edit.setTextCursor(cursor)

    def lora_dirs(self) -> tuple[str, ...]:
        """The chosen model's folder: the engine looks for a prompt's LoRAs and embeddings there (and in the user's and
        bundled models folders), so the menu offers what it will find."""
        return (str(Path(self.model.path).parent),) if self.model is not None and self.model.path else ()

    def fill_extras_menu(self) -> None:
        """The LoRA files and embeddings found beside the models (engine.api.asset_folders), then ways to add one."""
        menu = self.extras_menu
        menu.clear()
        names = api.list_loras(self.lora_dirs())
        menu.addSection("LoRA")
        for name in names:
            menu.addAction(name, lambda n=name: self.add_lora(n))
        if not names:
            menu.addAction("No LoRA files yet").setEnabled(False)
        embeddings = list(api.list_assets("embedding", self.lora_dirs()))
        for where, edit in (("prompt", self.prompt), ("negative prompt", self.negative)):
            sub = menu.addMenu(f"Embedding in the {where}")
            sub.setEnabled(bool(embeddings))
            for name in embeddings:
                sub.addAction(name, lambda n=name, e=edit: self.append(e, f"embedding:{n}", ", "))
        menu.addSeparator()
        menu.addAction("Save prompts as a style...", self.save_style_dialog)
        delete = menu.addAction("Delete the style", lambda: self.styleDeleted.emit(self.style.currentData()))
        delete.setEnabled(bool(self.style.currentData()))
        menu.addSeparator()
        menu.addAction("Add LoRA file...", lambda: self.add_file_dialog("lora"))
        menu.addAction("Add embedding file...", lambda: self.add_file_dialog("embedding"))

    def set_styles(self, names: list[str]) -> None:
        """The saved styles' names, the document's one chosen (a name no longer saved shows as chosen, to be unset)."""
        fill_names(self.style, "No style", names, self.doc.params.style)

    def save_style_dialog(self) -> str:
        name, ok = QInputDialog.getText(self, "Save as style", "Name of the style (the prompts are saved in it):")
        name = name.strip() if ok else ""
        if name:
            self.styleSaved.emit(name, self.prompt.toPlainText(), self.negative.toPlainText())
        return name

    @staticmethod
    def append(edit: QPlainTextEdit, text: str, separator: str = " ") -> None:
        """Append text to a prompt box unless it is there already (an edit like typing it, so Ctrl+Z takes it back)."""
        if text in edit.toPlainText():
            return
        cursor = edit.textCursor()
        cursor.movePosition(cursor.MoveOperation.End)
        cursor.insertText((separator if edit.toPlainText().strip() else "") + text)

    def add_lora(self, name: str, weight: float = 1.0) -> None:
        self.append(self.prompt, f"<lora:{name}:{weight:g}>")

    def add_file_dialog(self, kind: str) -> None:
        pattern = "LoRA (*.safetensors *.pt *.ckpt)" if kind == "lora" else "Embedding (*.safetensors *.pt *.bin)"
        path, _ = QFileDialog.getOpenFileName(self, f"Add {kind}", "", pattern)
        if path:
            self.install(path, kind)

    def install_lora(self, path: str) -> str:
        return self.install(path, "lora")

    def install(self, path: str, kind: str) -> str:
        """Link (or copy) a LoRA or embedding file into the user's folder for it and add it to the prompt; '' or the
        error."""
        try:
            dest = install_model(path, str(api.asset_folders(kind)[0]))
        except OSError as e:
            self.hint.setText(f"<span style='color:#e66'>{Path(path).name}: {e}</span>")
            self.hint.setVisible(True)
            return str(e)
        if kind == "lora":
            self.add_lora(dest.stem)
        else:
            self.append(self.prompt, f"embedding:{dest.stem}", ", ")
        return ""

    def _check_words(self) -> None:
        m = self.model
        note = api.ignored_words_note(m.name, m.vocabulary, self.prompt.toPlainText()) if m is not None else ""
        if note:
            self.hint.setText(f"<span style='color:#d80'>{note}.</span> Hover for the words it knows.")
        self.hint.setVisible(bool(note))

    def sync(self, doc: Document) -> None:
        self.doc = doc
        if self.style.findData(doc.params.style) < 0:
            self.set_styles([self.style.itemData(i) for i in range(1, self.style.count())])
        _set(self.style, doc.params.style)
        _set(self.prompt, doc.params.prompt)
        _set(self.negative, doc.params.negative_prompt)
        self._check_words()
