// Placeholder: filled in by its own issue. selfCheck returns 0 when the
// module's internal checks pass.
export function pagingSelfCheck(): i32 {
  return 0;
}
