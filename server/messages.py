"""Every string a page shows, in English (the key) and Japanese.

Deeplearning4j's UI let its users pick the page language (seed 004 is its Japanese guide).
A page calls ``t("Score")``; a string missing from a table is shown in English, and a test
checks that every string the pages use has its Japanese form.
"""

from __future__ import annotations

import time

LANGUAGES = ("en", "ja")

JA: dict[str, str] = {
    "embedviz": "embedviz",
    "Overview": "概要",
    "Model": "モデル",
    "System": "システム",
    "Health": "ヘルス",
    "Embeddings": "埋め込み",
    "Sessions": "セッション",
    "Session": "セッション",
    "started": "開始",
    "last update": "最終更新",
    "Worker": "ワーカー",
    "x axis": "横軸",
    "Iteration": "イテレーション",
    "Relative time (s)": "相対時間 (秒)",
    "Wall time": "時刻",
    "Smoothing": "平滑化",
    "Log scale": "対数スケール",
    "Download CSV": "CSVをダウンロード",
    "Score": "スコア",
    "Metrics (training score and logged metrics)": "メトリクス (訓練スコアと記録されたメトリクス)",
    "training score": "訓練スコア",
    "Model and training": "モデルと訓練",
    "log10 update:param ratio per parameter (about -3 is healthy)":
        "パラメータごとの更新量:パラメータ比 (log10、-3 前後が健全)",
    "log10 stdev of activations": "活性化の標準偏差 (log10)",
    "log10 stdev of gradients": "勾配の標準偏差 (log10)",
    "log10 stdev of updates": "更新量の標準偏差 (log10)",
    "Learning rate per parameter group": "パラメータグループごとの学習率",
    "Layer": "レイヤー",
    "Layer graph": "レイヤーグラフ",
    "name": "名前",
    "type": "種類",
    "parameters": "パラメータ数",
    "shapes": "形状",
    "output": "出力",
    "Update:param ratio (log10) and its magnitudes": "更新量:パラメータ比 (log10) と大きさ",
    "mean |param|": "平均 |パラメータ|",
    "mean |update|": "平均 |更新量|",
    "Activation mean +/- 2 stdev": "活性化の平均 ± 2 標準偏差",
    "Dead units (zero fraction of the output)": "死んだユニット (出力のゼロの割合)",
    "NaN and Inf counts": "NaN と Inf の数",
    "Histograms over time": "ヒストグラムの推移",
    "Histogram at iteration": "イテレーションのヒストグラム",
    "parameter values": "パラメータの値",
    "gradients": "勾配",
    "updates": "更新量",
    "activations": "活性化",
    "value": "値",
    "count": "個数",
    "Process memory (MB)": "プロセスのメモリ (MB)",
    "Device memory (MB)": "デバイスのメモリ (MB)",
    "Iteration time (ms)": "イテレーション時間 (ms)",
    "Examples per second": "毎秒のサンプル数",
    "The listener's own cost (ms per reported iteration)": "リスナー自身のコスト (報告1回あたり ms)",
    "Dropped and failed reports": "破棄・失敗したレポート",
    "Findings, worst first": "所見 (重い順)",
    "Imported from TensorBoard: its histograms keep at most the count, mean, stdev, min and max "
    "of a tensor, not the mean magnitudes of parameters and updates that these charts need "
    "(record the training with StatsListener for them).":
        "TensorBoard から取り込んだセッションです。そのヒストグラムが持つのは多くてもテンソルの個数・"
        "平均・標準偏差・最小・最大で、これらのグラフに必要なパラメータと更新量の平均絶対値は持ちません "
        "(StatsListener で記録すると得られます)。",
    "Imported from TensorBoard: a learning rate it logged is among the metrics (overview).":
        "TensorBoard から取り込んだセッションです。記録された学習率はメトリクス (概要) にあります。",
    "tags": "タグ",
    "Checks that could not run for want of data": "データがないため実行できなかったチェック",
    "no score (training loss)": "スコア (訓練損失) がない",
    "no score and no tensor statistics": "スコアもテンソルの統計もない",
    "the number of classes is not known (num_classes=)": "クラス数が不明 (num_classes=)",
    "no mean magnitudes of the parameters": "パラメータの平均絶対値がない",
    "no mean magnitudes of the updates": "更新量の平均絶対値がない",
    "no mean magnitudes of the gradients": "勾配の平均絶対値がない",
    "no zero fractions of the activations": "活性化のゼロの割合がない",
    "no activation statistics": "活性化の統計がない",
    "no layer table (the layers' types: a listener records it)":
        "層の表 (層の種類。リスナーが記録する) がない",
    "no validation loss (a metric named *loss*)": "検証損失 (名前に loss を含むメトリクス) がない",
    "no reports": "レポートがない",
    "No findings in the store for these sessions: the health checks have not run, or found nothing.":
        "このセッションには所見がありません。ヘルスチェックが実行されていないか、何も見つかっていません。",
    "Severity": "重大度",
    "Check": "チェック",
    "Message": "内容",
    "Show": "表示",
    "No sessions in this store yet: record one with StatsListener, or run `embedviz demo`.":
        "このストアにはまだセッションがありません。StatsListener で記録するか、`embedviz demo` を実行してください。",
    "No series of this kind in this session.": "このセッションにはこの種類の系列がありません。",
    "Embedding set": "埋め込みセット",
    "Snapshot": "スナップショット",
    "Colour by": "色分け",
    "none": "なし",
    "cluster": "クラスタ",
    "Search words": "単語を検索",
    "matches": "件一致",
    "match": "件一致",
    "Already projected with these parameters: shown.": "同じパラメータの射影が既にあるので、それを表示しました。",
    "Nearest neighbours (cosine, original space)": "最近傍 (コサイン、元の空間)",
    "word": "単語",
    "cosine distance": "コサイン距離",
    "map distance": "マップ上の距離",
    "Selection": "選択",
    "Download TSV": "TSVをダウンロード",
    "Click a word to list its nearest neighbours; lasso or box-select to list a group.":
        "単語をクリックすると最近傍を表示します。投げ縄・矩形選択でグループを表示します。",
    "New projection": "新しい射影",
    "Method": "手法",
    "Perplexity": "パープレキシティ",
    "Iterations": "反復回数",
    "Stop when converged": "収束したら止める",
    "iterations run": "回反復",
    "Top N words": "上位 N 語",
    "Run": "実行",
    "running": "実行中",
    "done": "完了",
    "failed": "失敗",
    "No projection of this set yet: run one with the form.": "このセットの射影はまだありません。フォームから実行してください。",
    "No embedding sets in this store.": "このストアには埋め込みセットがありません。",
    "kNN kept": "kNN 保存率",
    "trustworthiness": "信頼性",
    "words": "語",
    "live": "ライブ",
    "Cancel": "中止",
    "No learning rate was recorded in the sessions picked.": "選択したセッションには学習率の記録がありません。",
    "No series of this kind in the sessions picked.": "選択したセッションにはこの種類の系列がありません。",
    "Pick a session above.": "上でセッションを選んでください。",
    "Project this set (t-SNE)": "このセットを射影 (t-SNE)",
    "Projection": "射影",
    "The store is open read-only: a new projection cannot be stored in it.":
        "ストアは読み取り専用で開かれているため、新しい射影を保存できません。",
    "This server runs no projections.": "このサーバーは射影を実行しません。",
    "all": "すべて",
    "mean": "平均",
    "zero fraction": "ゼロの割合",
    "Mean magnitude of parameters and updates": "パラメータと更新量の平均の大きさ",
    "Update:param ratio (log10)": "更新量:パラメータ比 (log10)",
    "group": "グループ",
    "iteration": "イテレーション",
    "more": "件ほか",
    "queued": "待機中",
    "cancelled": "中止済み",
    "interrupted": "中断",
    "pending": "保留中",
    "snapshots": "スナップショット",
    "No update:param ratio: no parameter updates were recorded in the sessions picked.":
        "更新量:パラメータ比はありません。選択したセッションにはパラメータの更新量が記録されていません。",
    "No training score in the sessions picked: StatsListener records it when step(loss) is given the loss.":
        "選択したセッションには訓練スコアがありません。StatsListener は step(loss) に損失を渡すと記録します。",
    "Nothing recorded yet in the sessions picked: the pages fill as a training reports.":
        "選択したセッションにはまだ記録がありません。訓練が報告するにつれてページが埋まります。",
    "No per-layer statistics in the sessions picked (a word2vec run records its loss only): record a training with StatsListener.":
        "選択したセッションにはレイヤーごとの統計がありません (word2vec の実行は損失のみを記録します)。StatsListener で訓練を記録してください。",
    "No system series in the sessions picked: StatsListener records them with every report.":
        "選択したセッションにはシステムの系列がありません。StatsListener は報告ごとにこれらを記録します。",
    "No training sessions in this store: the Embeddings page shows its maps. Record a training with StatsListener, or run `embedviz demo`.":
        "このストアには訓練セッションがありません。埋め込みページでマップを表示できます。StatsListener で訓練を記録するか、`embedviz demo` を実行してください。",
    "No projection of this set yet: project it with the button below or the form.":
        "このセットの射影はまだありません。下のボタンかフォームで射影してください。",
    "No embedding sets in this store: plot_vocab(...) with store=, Word2VecListener or embedviz.project(...) adds them.":
        "このストアには埋め込みセットがありません。store= を付けた plot_vocab(...)、Word2VecListener、embedviz.project(...) で追加できます。",
    # the info table's sections and fields
    "session": "セッション",
    "worker": "ワーカー",
    "model": "モデル",
    "optimizer": "オプティマイザ",
    "hyperparameters": "ハイパーパラメータ",
    "software": "ソフトウェア",
    "hardware": "ハードウェア",
    "listener": "リスナー",
    "layers": "レイヤー数",
    "frequency": "頻度",
    "background": "バックグラウンド",
    "sample_limit": "サンプル上限",
    # tensor kinds
    "param": "パラメータ",
    "gradient": "勾配",
    "update": "更新量",
    "activation": "活性化",
    # what was not recorded, and how to record it (embedviz.server.explain)
    "No optimizer attached: updates are measured from parameter changes; pass lr= to step() for the learning rate.":
        "オプティマイザが接続されていません。更新量はパラメータの変化から測っています。学習率を記録するには step() に lr= を渡してください。",
    "No optimizer attached: updates are measured from parameter changes (the learning rate is the one passed to step()).":
        "オプティマイザが接続されていません。更新量はパラメータの変化から測っています (学習率は step() に渡された値です)。",
    "No updates recorded: attach the optimizer (listener.attach(model, optimizer)); without one, the current listener measures them from parameter changes.":
        "更新量が記録されていません。オプティマイザを接続してください (listener.attach(model, optimizer))。接続しない場合、現在のリスナーはパラメータの変化から測ります。",
    "No learning rate recorded: attach the optimizer (listener.attach(model, optimizer)) or pass lr= to listener.step().":
        "学習率が記録されていません。オプティマイザを接続する (listener.attach(model, optimizer)) か、listener.step() に lr= を渡してください。",
    "No activations recorded: the listener was made with activations=False (StatsListener(..., activations=True) records them).":
        "活性化が記録されていません。リスナーが activations=False で作られています (StatsListener(..., activations=True) で記録されます)。",
    "No histograms recorded: the listener was made with histograms=False (StatsListener(..., histograms=True) records them).":
        "ヒストグラムが記録されていません。リスナーが histograms=False で作られています (StatsListener(..., histograms=True) で記録されます)。",
    "No device memory: the model ran on the CPU (device memory is recorded for CUDA devices).":
        "デバイスのメモリはありません。モデルは CPU で動きました (デバイスのメモリは CUDA デバイスで記録されます)。",
    "No examples per second: pass batch_size= to listener.step().":
        "毎秒のサンプル数はありません。listener.step() に batch_size= を渡してください。",
    "Reports were spaced to every {n} iterations (asked: every {f}) to keep the monitor within its cost budget.":
        "モニターのコストを予算内に保つため、レポートの間隔を {n} イテレーションごとに広げました (指定: {f} ごと)。",
    "Adversarial objective: the workers' losses ({workers}) move against each other; neither is expected to fall steadily, and the health checks judge them so.":
        "敵対的な目的関数: ワーカー ({workers}) の損失は互いに逆に動きます。どちらも着実に下がるとは限らず、ヘルスチェックもそのように判定します。",
    "All workers: each line is the median across the workers of its session, its band their range (min to max).":
        "すべてのワーカー: 各線はセッションのワーカー間の中央値、帯はその範囲 (最小から最大) です。",
    "all workers": "すべてのワーカー",
    "Mixed precision: steps skipped by the gradient scaler": "混合精度: 勾配スケーラーがスキップしたステップ",
    "Mixed precision: loss scale": "混合精度: 損失スケール",
}

TABLES = {"en": {}, "ja": JA}


class Messages:
    """``t = Messages("ja"); t("Score")``: the string in the page's language. Strings a
    table lacks are shown in English and collected in ``missing`` (a test builds every
    page in Japanese and expects none)."""

    def __init__(self, lang: str = "en") -> None:
        self.lang = lang if lang in TABLES else "en"
        self._table = TABLES[self.lang]
        self.missing: set[str] = set()

    def __call__(self, text: str) -> str:
        got = self._table.get(text)
        if got is None:
            if self.lang != "en":
                self.missing.add(text)
            return text
        return got

    def when(self, t: float | None) -> str:
        """A wall time in the page's language."""
        if t is None:
            return "-"
        fmt = "%Y年%m月%d日 %H:%M:%S" if self.lang == "ja" else "%Y-%m-%d %H:%M:%S"
        return time.strftime(fmt, time.localtime(t))


def pick_language(asked: str | None, accept_language: str | None) -> str:
    """``--lang`` or ``?lang=`` when given, else the browser's first language we have."""
    if asked in TABLES:
        return asked  # type: ignore[return-value]
    for part in (accept_language or "").split(","):
        code = part.split(";")[0].strip().lower()[:2]
        if code in TABLES:
            return code
    return "en"
