// The shape a Vigil dashboard must have, in Grafana's own types (@grafana/schema): the
// dashboard model, and each panel's options and field config by its plugin type.
// tests/deploy/test_grafana.py writes the dashboard JSON as an object literal typed
// `CheckedDashboard` and runs tsc: a wrong type, a misspelt or unknown key, or a panel type
// not listed below fails the check.
import type {
  Dashboard,
  DataSourceRef,
  FieldConfig,
  FieldConfigSource,
  Panel,
  RowPanel,
} from "@grafana/schema";
import type * as BarGauge from "@grafana/schema/dist/esm/raw/composable/bargauge/panelcfg/x/BarGaugePanelCfg_types.gen";
import type * as Heatmap from "@grafana/schema/dist/esm/raw/composable/heatmap/panelcfg/x/HeatmapPanelCfg_types.gen";
import type * as Stat from "@grafana/schema/dist/esm/raw/composable/stat/panelcfg/x/StatPanelCfg_types.gen";
import type * as StateTimeline from "@grafana/schema/dist/esm/raw/composable/statetimeline/panelcfg/x/StateTimelinePanelCfg_types.gen";
import type * as Table from "@grafana/schema/dist/esm/raw/composable/table/panelcfg/x/TablePanelCfg_types.gen";
import type * as TimeSeries from "@grafana/schema/dist/esm/raw/composable/timeseries/panelcfg/x/TimeSeriesPanelCfg_types.gen";

// JSON cannot spell a TypeScript enum member: accept its value instead ("absolute" for
// ThresholdsMode.Absolute). Numeric literals already match numeric enums.
type Jsonify<T> = T extends string
  ? `${T}`
  : T extends number | boolean | null | undefined
    ? T
    : T extends Array<infer U>
      ? Array<Jsonify<U>>
      : T extends object
        ? { [K in keyof T]: Jsonify<T[K]> }
        : T;

// Grafana fills in every option a dashboard leaves out, so options may be partial; what
// is there must still be right.
type DeepPartial<T> = T extends Array<infer U>
  ? Array<DeepPartial<U>>
  : T extends object
    ? { [K in keyof T]?: DeepPartial<T[K]> }
    : T;

// A Prometheus query as Grafana's Prometheus data source stores it (the data source's
// query type is not in @grafana/schema).
interface PrometheusQuery {
  refId: string;
  datasource: DataSourceRef & { type: "prometheus" };
  expr: string;
  editorMode?: "code" | "builder";
  legendFormat?: string;
  range?: boolean;
  instant?: boolean;
  format?: "time_series" | "table" | "heatmap";
  interval?: string;
  hide?: boolean;
  exemplar?: boolean;
}

type Typed<TType extends string, TOptions, TCustom> = Omit<
  Panel,
  "type" | "options" | "fieldConfig" | "targets" | "datasource"
> & {
  type: TType;
  datasource: DataSourceRef & { type: "prometheus" };
  options: DeepPartial<TOptions>;
  fieldConfig: Omit<FieldConfigSource, "defaults"> & {
    defaults: Omit<FieldConfig, "custom"> & { custom?: DeepPartial<TCustom> };
  };
  targets: PrometheusQuery[];
};

type CheckedPanel =
  | Jsonify<Typed<"timeseries", TimeSeries.Options, TimeSeries.FieldConfig>>
  | Jsonify<Typed<"stat", Stat.Options, Record<string, never>>>
  | Jsonify<Typed<"table", Table.Options, Table.FieldConfig>>
  | Jsonify<Typed<"heatmap", Heatmap.Options, Heatmap.FieldConfig>>
  | Jsonify<Typed<"bargauge", BarGauge.Options, Record<string, never>>>
  | Jsonify<Typed<"state-timeline", StateTimeline.Options, StateTimeline.FieldConfig>>
  | Jsonify<Omit<RowPanel, "panels"> & { type: "row"; panels: [] }>;

export type CheckedDashboard = Jsonify<Omit<Dashboard, "panels">> & {
  panels: CheckedPanel[];
};
